//! What an agent is trusted with: an agent token scoped by `tenants=` and `regions=` gets the
//! config of its scope only, and may report attempts only for the subscriptions it serves.
//!
//! - **Hello**: the agent's region must lie within the token's regions; the tenants it names
//!   must lie within the token's tenants, and a hello that names none (all tenants) is
//!   narrowed to the token's. The config stream, emit orders and the agents list then all see
//!   the narrowed interest. Every field of the hello is checked as an agent checks its own
//!   flags, and a revision it claims beyond what it was sent counts for nothing.
//! - **Reports**: an attempt is stored only when its subscription is one the control plane
//!   knows (now, or deleted within the last day), lies within the token's scope, and belongs
//!   to the attempt's tenant. Others are refused, counted by [`Refusal`] and logged, and the
//!   rest of the batch is stored: a forged 410 for another tenant's endpoint disables
//!   nothing. So is an attempt whose event id, type, URL, error kind or agent id breaks the
//!   limits every agent keeps (the log indexes them). A batch under an agent id another
//!   identity holds is refused as a hello with it would be.

use herald_core::event_type::validate_event_type;
use herald_core::interest::MAX_INTEREST;
use herald_core::limits::{MAX_ATTEMPT_NUMBER, MAX_URL_LEN};
use herald_core::validate::{self, quoted};
use herald_proto::v1 as pb;
use prometheus_client::encoding::EncodeLabelValue;
use tonic::Status;

use crate::access::{Identity, Scope};

/// The longest agent id, node, region and version an agent may send.
pub const MAX_HELLO_FIELD: usize = herald_core::validate::MAX_AGENT_FIELD_LEN;
/// The longest reason of a refused config change that is kept (longer ones are cut).
pub const MAX_NACK_REASON: usize = 1024;

/// The hello as the control plane takes it from an agent calling as `who`: checked against
/// the token's scope and narrowed to it.
pub fn admit_hello(who: &Identity, mut hello: pb::AgentHello) -> Result<pb::AgentHello, Status> {
    check_hello(&hello).map_err(herald_proto::convert::invalid_argument)?;
    if !who.regions.allows(&hello.region) {
        return Err(Status::permission_denied(format!(
            "{} serves the regions {}, not {}",
            who.name,
            who.regions,
            quoted(&hello.region)
        )));
    }
    match &who.tenants {
        Scope::All => {}
        Scope::Only(tenants) if hello.tenants.is_empty() => {
            // "Every tenant" as far as the token reaches.
            hello.tenants = tenants.iter().cloned().collect();
        }
        Scope::Only(_) => {
            if let Some(outside) = hello.tenants.iter().find(|t| !who.sees(t)) {
                return Err(Status::permission_denied(format!(
                    "{} serves the tenants {}, not {}",
                    who.name,
                    who.tenants,
                    quoted(outside)
                )));
            }
        }
    }
    Ok(hello)
}

/// Checks a hello's fields as an agent checks its own flags (`--id`, `--node`, `--region`,
/// `--tenants`, `--event-type-prefixes`): an id of the characters agent ids use, a node and
/// version shown as given, a region as subscriptions name them (or none), tenants as the API
/// names them, and bounded lists of them.
fn check_hello(hello: &pb::AgentHello) -> Result<(), validate::ValidationError> {
    use validate::ValidationError;
    if hello.agent_id.is_empty() {
        return Err(ValidationError::new("agent_id", "is required"));
    }
    validate::agent_id(&hello.agent_id)?;
    validate::label("node", &hello.node, MAX_HELLO_FIELD)?;
    if !hello.region.is_empty() {
        validate::region(&hello.region)?;
    }
    validate::label("version", &hello.version, MAX_HELLO_FIELD)?;
    if hello.tenants.len() + hello.event_type_prefixes.len() > MAX_INTEREST {
        let field = if hello.tenants.len() > hello.event_type_prefixes.len() {
            "tenants"
        } else {
            "event_type_prefixes"
        };
        return Err(ValidationError::new(
            field,
            format!("at most {MAX_INTEREST} tenants and prefixes together"),
        ));
    }
    for (i, tenant) in hello.tenants.iter().enumerate() {
        validate::tenant(tenant)
            .map_err(|e| ValidationError::new(format!("tenants[{i}]"), e.reason))?;
    }
    for (i, prefix) in hello.event_type_prefixes.iter().enumerate() {
        validate::event_type_prefix(prefix)
            .map_err(|e| ValidationError::new(format!("event_type_prefixes[{i}]"), e.reason))?;
    }
    Ok(())
}

/// `reason` cut to at most [`MAX_NACK_REASON`] bytes, on one line: a control character (a
/// line break, an escape sequence a terminal would obey) as U+FFFD. Operators read it in
/// agent lists and logs.
pub fn bounded_reason(reason: &str) -> String {
    cut(reason, MAX_NACK_REASON)
        .chars()
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect()
}

/// `text` cut to at most `max` bytes, at a character boundary.
pub fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Why an attempt report was refused.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Refusal {
    /// No subscription has this id (nor had, within the last day).
    unknown_subscription,
    /// The subscription lies outside the agent token's tenants or regions.
    foreign_subscription,
    /// The attempt names another tenant than its subscription's.
    tenant_mismatch,
    /// A field the log finds attempts by (event id, event type, URL, error kind, agent id)
    /// breaks the API's limits or holds a control character (so does the request it sent),
    /// or the attempt is not one an agent makes (no known outcome,
    /// a status outside 100 to 999, no number or one past `MAX_ATTEMPT_NUMBER`, no start, or
    /// one a day or more ahead, a
    /// negative or day-long duration); no agent of this version sends one.
    malformed,
}

impl Refusal {
    /// Every reason.
    pub const ALL: [Refusal; 4] = [
        Refusal::unknown_subscription,
        Refusal::foreign_subscription,
        Refusal::tenant_mismatch,
        Refusal::malformed,
    ];
}

/// The longest error kind name an attempt may report (the known ones are much shorter; a
/// newer agent's kinds are kept as they come).
pub const MAX_ERROR_KIND_LEN: usize = 32;

/// The longest an attempt may say it took: far past any subscription's timeout.
const MAX_ATTEMPT_DURATION: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);
/// How far ahead of this replica's clock an attempt may say it started (an agent's clock may
/// run ahead a little; a date in the future would skew endpoint health and the log's days).
const MAX_CLOCK_AHEAD: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// Whether `attempt` is one an agent makes: the fields the log finds it by within the limits
/// every agent keeps (an event id as `Emit` accepts them; types, URLs and names no longer than
/// theirs), and an outcome, HTTP status, number, start and duration that can be.
pub fn well_formed(attempt: &pb::Attempt, now: std::time::SystemTime) -> bool {
    let outcome = pb::Outcome::try_from(attempt.outcome);
    let started = attempt
        .started_at
        .as_ref()
        .filter(|t| herald_proto::convert::validate_timestamp("started_at", t).is_ok())
        .map(herald_proto::convert::system_time);
    // None: an attempt that sent nothing.
    let took = attempt
        .duration
        .as_ref()
        .map(herald_proto::convert::valid_duration);
    validate::event_id(&attempt.event_id).is_ok()
        && (attempt.event_type.is_empty() || validate_event_type(&attempt.event_type).is_ok())
        && attempt.url.len() <= MAX_URL_LEN
        && attempt.error_kind.len() <= MAX_ERROR_KIND_LEN
        && attempt.agent_id.len() <= MAX_HELLO_FIELD
        && [&attempt.url, &attempt.error_kind, &attempt.agent_id]
            .into_iter()
            .all(|field| plain(field))
        // A URL as requests go to it is ASCII (anything else percent-encoded).
        && attempt.url.is_ascii()
        && attempt.request.as_ref().is_none_or(sent_as_http_allows)
        && outcome.is_ok_and(|o| o != pb::Outcome::Unspecified)
        // Whatever status line a receiver answers with, as the HTTP client reads it.
        && (attempt.status_code == 0 || (100..=999).contains(&attempt.status_code))
        && (1..=MAX_ATTEMPT_NUMBER).contains(&attempt.attempt)
        && started.is_some_and(|t| t <= now + MAX_CLOCK_AHEAD)
        && took.is_none_or(|d| d.is_some_and(|d| d <= MAX_ATTEMPT_DURATION))
}

/// Whether `text` holds no control character: URLs, names and kinds an agent reports never
/// do (and PostgreSQL's text refuses NUL).
fn plain(text: &str) -> bool {
    !text.chars().any(char::is_control)
}

/// Whether a request an attempt reports could have been sent: a method and URL without
/// control characters, header names without them and values without NUL (HTTP allows tabs
/// and bytes past ASCII in values, never NUL).
fn sent_as_http_allows(request: &pb::SentRequest) -> bool {
    plain(&request.method)
        && plain(&request.url)
        && request.url.is_ascii()
        && request
            .headers
            .iter()
            .all(|header| plain(&header.name) && !header.value.contains('\0'))
}

/// Whether an agent calling as `who` may report `attempt`, made for `sub` (`None`: no such
/// subscription).
pub fn check_report(
    who: &Identity,
    sub: Option<&pb::Subscription>,
    attempt: &pb::Attempt,
) -> Result<(), Refusal> {
    if !well_formed(attempt, std::time::SystemTime::now()) {
        return Err(Refusal::malformed);
    }
    let Some(sub) = sub else {
        return Err(Refusal::unknown_subscription);
    };
    let in_regions = sub.regions.is_empty() || sub.regions.iter().any(|r| who.regions.allows(r));
    if !who.sees(&sub.tenant) || !in_regions {
        return Err(Refusal::foreign_subscription);
    }
    if attempt.tenant != sub.tenant {
        return Err(Refusal::tenant_mismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Role;

    fn agent(tenants: Scope, regions: Scope) -> Identity {
        Identity {
            name: "eu-agents".into(),
            role: Role::Agent,
            tenants,
            regions,
        }
    }

    fn only(names: &[&str]) -> Scope {
        Scope::Only(names.iter().map(|n| n.to_string()).collect())
    }

    fn hello(region: &str, tenants: &[&str]) -> pb::AgentHello {
        pb::AgentHello {
            agent_id: "agt_1".into(),
            region: region.into(),
            tenants: tenants.iter().map(|t| t.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_scoped_hello_is_narrowed_or_refused() {
        let who = agent(only(&["shop-a", "shop-b"]), only(&["eu"]));
        let narrowed = admit_hello(&who, hello("eu", &[])).expect("admitted");
        assert_eq!(narrowed.tenants, ["shop-a", "shop-b"]);
        let within = admit_hello(&who, hello("eu", &["shop-b"])).expect("admitted");
        assert_eq!(within.tenants, ["shop-b"]);
        let outside = admit_hello(&who, hello("eu", &["shop-b", "shop-c"])).unwrap_err();
        assert_eq!(outside.code(), tonic::Code::PermissionDenied);
        assert!(outside.message().contains("shop-c"), "{outside:?}");
        let elsewhere = admit_hello(&who, hello("us", &[])).unwrap_err();
        assert_eq!(elsewhere.code(), tonic::Code::PermissionDenied);
        // A token of every tenant and region takes the hello as it is.
        let fleet = agent(Scope::All, Scope::All);
        assert!(
            admit_hello(&fleet, hello("", &[]))
                .unwrap()
                .tenants
                .is_empty()
        );
    }

    #[test]
    fn hello_fields_are_bounded() {
        let fleet = agent(Scope::All, Scope::All);
        let long = "x".repeat(MAX_HELLO_FIELD + 1);
        for field in ["agent_id", "node", "region", "version"] {
            let mut h = hello("", &[]);
            match field {
                "agent_id" => h.agent_id = long.clone(),
                "node" => h.node = long.clone(),
                "region" => h.region = long.clone(),
                _ => h.version = long.clone(),
            }
            let refused = admit_hello(&fleet, h).unwrap_err();
            assert_eq!(refused.code(), tonic::Code::InvalidArgument);
            assert!(refused.message().starts_with(field), "{refused:?}");
        }
        let bad_tenant = admit_hello(&fleet, hello("", &["a/b"])).unwrap_err();
        assert_eq!(bad_tenant.code(), tonic::Code::InvalidArgument);
        // Fields as an agent checks its own flags, each refusal naming its field.
        let refused_field = |h: pb::AgentHello| {
            let status = admit_hello(&fleet, h).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            herald_proto::convert::refused_field(&status)
                .expect("a field violation")
                .field
        };
        assert_eq!(refused_field(hello("", &["shop-a", "a/b"])), "tenants[1]");
        assert_eq!(
            refused_field(pb::AgentHello {
                agent_id: "a b".into(),
                ..hello("", &[])
            }),
            "agent_id"
        );
        assert_eq!(
            refused_field(pb::AgentHello {
                agent_id: String::new(),
                ..hello("", &[])
            }),
            "agent_id"
        );
        assert_eq!(refused_field(hello("EU West", &[])), "region");
        assert_eq!(
            refused_field(pb::AgentHello {
                node: "node\u{1b}[2J".into(),
                ..hello("", &[])
            }),
            "node"
        );
        // Shown on one line of a list: no line break either.
        assert_eq!(
            refused_field(pb::AgentHello {
                node: "node\nfake row".into(),
                ..hello("", &[])
            }),
            "node"
        );
        assert_eq!(
            refused_field(pb::AgentHello {
                version: "1\n2".into(),
                ..hello("", &[])
            }),
            "version"
        );
        assert_eq!(
            refused_field(pb::AgentHello {
                event_type_prefixes: vec!["order.".into(), "Order!".into()],
                ..hello("", &[])
            }),
            "event_type_prefixes[1]"
        );
        assert_eq!(
            refused_field(pb::AgentHello {
                tenants: vec!["shop".into(); MAX_INTEREST + 1],
                ..hello("", &[])
            }),
            "tenants"
        );
        let as_agents_send_it = pb::AgentHello {
            node: "node-1".into(),
            version: "0.1.0".into(),
            event_type_prefixes: vec!["order.".into()],
            ..hello("eu-west-1", &["shop-a"])
        };
        assert!(admit_hello(&fleet, as_agents_send_it).is_ok());
        assert_eq!(bounded_reason(&"é".repeat(1000)).len(), MAX_NACK_REASON);
        assert_eq!(bounded_reason("short"), "short");
        assert_eq!(
            bounded_reason("\x1b[31mred\x00\nnext"),
            "\u{FFFD}[31mred\u{FFFD}\u{FFFD}next"
        );
    }

    #[test]
    fn reports_are_checked_against_the_subscription_and_the_scope() {
        let who = agent(only(&["shop-a"]), only(&["eu"]));
        let sub = |tenant: &str, regions: &[&str]| pb::Subscription {
            id: "sub_1".into(),
            tenant: tenant.into(),
            regions: regions.iter().map(|r| r.to_string()).collect(),
            ..Default::default()
        };
        let now = std::time::SystemTime::now();
        let attempt = |tenant: &str| pb::Attempt {
            event_id: "evt_1".into(),
            subscription_id: "sub_1".into(),
            tenant: tenant.into(),
            attempt: 1,
            outcome: pb::Outcome::Failed as i32,
            status_code: 503,
            started_at: Some(herald_proto::convert::timestamp(now)),
            duration: Some(herald_proto::convert::duration(
                std::time::Duration::from_millis(40),
            )),
            ..Default::default()
        };
        assert_eq!(
            check_report(&who, Some(&sub("shop-a", &[])), &attempt("shop-a")),
            Ok(())
        );
        // The request as sent, and an error text holding what a receiver answered (NUL is
        // shown as U+FFFD when stored).
        let with_request = pb::Attempt {
            error: "token endpoint answered 500: bad\0body".into(),
            request: Some(pb::SentRequest {
                method: "POST".into(),
                url: "https://shop.example/hooks".into(),
                headers: vec![pb::Header {
                    name: "x-note".into(),
                    value: "tab\there é".into(),
                }],
                ..Default::default()
            }),
            ..attempt("shop-a")
        };
        assert_eq!(
            check_report(&who, Some(&sub("shop-a", &[])), &with_request),
            Ok(())
        );
        // A receiver may answer any status line the HTTP client reads.
        let odd_status = pb::Attempt {
            status_code: 799,
            ..attempt("shop-a")
        };
        assert_eq!(
            check_report(&who, Some(&sub("shop-a", &[])), &odd_status),
            Ok(())
        );
        assert_eq!(
            check_report(
                &who,
                Some(&sub("shop-a", &["us", "eu"])),
                &attempt("shop-a")
            ),
            Ok(())
        );
        assert_eq!(
            check_report(&who, None, &attempt("shop-a")),
            Err(Refusal::unknown_subscription)
        );
        assert_eq!(
            check_report(&who, Some(&sub("shop-b", &[])), &attempt("shop-b")),
            Err(Refusal::foreign_subscription)
        );
        assert_eq!(
            check_report(&who, Some(&sub("shop-a", &["us"])), &attempt("shop-a")),
            Err(Refusal::foreign_subscription)
        );
        assert_eq!(
            check_report(&who, Some(&sub("shop-a", &[])), &attempt("shop-b")),
            Err(Refusal::tenant_mismatch)
        );
        // Fields the log indexes stay within the limits agents keep.
        let long = "x".repeat(4096);
        for malformed in [
            pb::Attempt {
                event_id: long.clone(),
                ..attempt("shop-a")
            },
            pb::Attempt {
                event_id: String::new(),
                ..attempt("shop-a")
            },
            pb::Attempt {
                event_type: long.clone(),
                ..attempt("shop-a")
            },
            pb::Attempt {
                url: format!("https://shop.example/{long}"),
                ..attempt("shop-a")
            },
            pb::Attempt {
                error_kind: long.clone(),
                ..attempt("shop-a")
            },
            pb::Attempt {
                agent_id: long.clone(),
                ..attempt("shop-a")
            },
            // Nothing an agent reports: what would skew endpoint health and the log's days.
            pb::Attempt {
                outcome: 99,
                ..attempt("shop-a")
            },
            pb::Attempt {
                outcome: pb::Outcome::Unspecified as i32,
                ..attempt("shop-a")
            },
            pb::Attempt {
                status_code: 1000,
                ..attempt("shop-a")
            },
            pb::Attempt {
                event_type: "NOT A TYPE".into(),
                ..attempt("shop-a")
            },
            pb::Attempt {
                attempt: 0,
                ..attempt("shop-a")
            },
            pb::Attempt {
                attempt: u32::MAX,
                ..attempt("shop-a")
            },
            pb::Attempt {
                started_at: None,
                ..attempt("shop-a")
            },
            pb::Attempt {
                started_at: Some(prost_types::Timestamp {
                    seconds: 253_402_300_800,
                    nanos: 0,
                }),
                ..attempt("shop-a")
            },
            pb::Attempt {
                started_at: Some(herald_proto::convert::timestamp(
                    now + std::time::Duration::from_secs(3 * 24 * 3600),
                )),
                ..attempt("shop-a")
            },
            pb::Attempt {
                started_at: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: -1,
                }),
                ..attempt("shop-a")
            },
            pb::Attempt {
                duration: Some(prost_types::Duration {
                    seconds: -100,
                    nanos: 0,
                }),
                ..attempt("shop-a")
            },
            // Control characters where no agent sends them (PostgreSQL's text refuses NUL).
            pb::Attempt {
                url: "https://shop.example/\0".into(),
                ..attempt("shop-a")
            },
            pb::Attempt {
                error_kind: "status\0".into(),
                ..attempt("shop-a")
            },
            pb::Attempt {
                agent_id: "agent\n1".into(),
                ..attempt("shop-a")
            },
            // A URL as sent is ASCII: a bidirectional override can only be a forgery.
            pb::Attempt {
                url: "https://shop.example/\u{202E}gpj.exe".into(),
                ..attempt("shop-a")
            },
            pb::Attempt {
                request: Some(pb::SentRequest {
                    method: "POST".into(),
                    headers: vec![pb::Header {
                        name: "x-shop".into(),
                        value: "a\0b".into(),
                    }],
                    ..Default::default()
                }),
                ..attempt("shop-a")
            },
            pb::Attempt {
                request: Some(pb::SentRequest {
                    method: "PO\rST".into(),
                    ..Default::default()
                }),
                ..attempt("shop-a")
            },
        ] {
            assert_eq!(
                check_report(&who, Some(&sub("shop-a", &[])), &malformed),
                Err(Refusal::malformed)
            );
        }
    }
}
