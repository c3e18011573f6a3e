//! `herald subscription …`: create, read, change and remove webhook endpoints.

use herald_core::subscription::{MAX_DISABLE_AFTER, MAX_MAX_IN_FLIGHT, MAX_RATE_LIMIT};
use std::time::Duration;

use anyhow::Context;
use herald_core::egress::Egress;
use herald_core::format::{Envelope, PayloadFormat};
use herald_core::retry::{Exponential, RetrySchedule};
use herald_proto::convert::{duration, exponential_policy, retry_policy};
use herald_proto::v1 as pb;
use herald_proto::v1::subscriptions_client::SubscriptionsClient;

use crate::connect::{Server, status_error};
use crate::output::{self, Format};
use crate::usage::usage;
use crate::watch::Watch;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Create a subscription; prints it with its id and signing secret.
    Create(CreateArgs),
    /// Show one subscription.
    Get {
        /// Subscription id (sub_…).
        id: String,
        /// Include the signing secrets.
        #[arg(long)]
        show_secret: bool,
        /// Show it again whenever it changes (Ctrl-C stops).
        #[arg(long, short = 'w')]
        watch: bool,
    },
    /// List subscriptions.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// Subscriptions per page (at most 1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        page_size: u32,
        /// Continue from a previous page.
        #[arg(long, default_value = "")]
        page_token: String,
        /// Show the list again whenever it changes (Ctrl-C stops).
        #[arg(long, short = 'w')]
        watch: bool,
    },
    /// Change a subscription; fails if someone else changed it since it was read.
    Update(UpdateArgs),
    /// Delete a subscription.
    Delete {
        /// Subscription id.
        id: String,
        /// Only if the stored revision is still this one.
        #[arg(long, default_value_t = 0)]
        revision: i64,
    },
    /// Resume delivery to a subscription.
    Enable {
        /// Subscription id.
        id: String,
        /// Send the deliveries parked while it was disabled (otherwise they are skipped).
        #[arg(long)]
        replay_parked: bool,
    },
    /// Send one test event to this subscription only, now, and print what the endpoint
    /// answered (status, latency, error, the start of the response). Exits 0 on a 2xx answer,
    /// 1 otherwise. Works on a disabled subscription; the attempt is logged as a test.
    Test {
        /// Subscription id.
        id: String,
        /// The event type (default: the subscription's first exact type, or the first
        /// catalogued type its first pattern selecting any selects).
        #[arg(long = "type", value_name = "TYPE")]
        event_type: Option<String>,
        /// The payload: JSON, or @FILE (default: the event type's catalogue example).
        #[arg(long, value_name = "JSON|@FILE", value_parser = parse_test_data)]
        data: Option<String>,
    },
    /// How an endpoint is doing: consecutive failures, when the run started, the last error.
    Health {
        /// Subscription id.
        id: String,
    },
    /// Stop delivery to a subscription; its deliveries are parked until it is enabled.
    Disable {
        /// Subscription id.
        id: String,
        /// Why (recorded; default "manual").
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Create many subscriptions from a file: a YAML or JSON list whose entries have the keys
    /// of `create`'s flags (`tenant`, `url`, `events`, `format`, `header`, `retry-schedule`,
    /// …). Shows progress; goes on past a refused entry and exits 1 if any was refused.
    Import {
        /// The file (`-` for standard input).
        file: String,
    },
    /// Add a new signing secret; the old one keeps signing during the grace period.
    RotateSecret {
        /// Subscription id.
        id: String,
        /// How long the old secrets keep signing at most (0: end them now). A subscription
        /// holds at most 8 secrets.
        #[arg(long, default_value = "24h", value_parser = herald_core::duration::parse)]
        grace: Duration,
    },
}

/// Fields shared by create and update. Each value is checked as the command line is parsed,
/// so a malformed one is a usage error (exit code 2) before anything is sent.
#[derive(clap::Args)]
pub struct Fields {
    /// Event types and patterns, comma-separated: order.created,order.*,*.
    #[arg(long, value_delimiter = ',')]
    events: Option<Vec<String>>,
    /// Body format: json or xml.
    #[arg(long, value_parser = parse_format)]
    format: Option<PayloadFormat>,
    /// Body shape: standard (the Standard Webhooks envelope {"type", "timestamp", "data"}; the
    /// default for new subscriptions) or raw (the payload alone; the type is in the
    /// webhook-event-type header).
    #[arg(long, value_name = "standard|raw", value_parser = parse_envelope)]
    envelope: Option<Envelope>,
    /// A description for operators.
    #[arg(long)]
    description: Option<String>,
    /// Receive only the events whose payload matches this filter (JSON, or @FILE), e.g.
    /// '{"total":{"$gte":100}}'. Operators: $eq $neq $gt $gte $lt $lte $in $nin $exist
    /// $startsWith $endsWith $and $or $not; "$attributes" matches the event's attributes.
    #[arg(long, value_name = "JSON|@FILE", conflicts_with = "no_filter", value_parser = parse_payload_filter)]
    filter: Option<String>,
    /// Remove the payload filter: receive every event of the subscribed types.
    #[arg(long)]
    no_filter: bool,
    /// An extra request header, NAME=VALUE (repeatable); replaces one of the same name.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Stop sending this extra request header (repeatable).
    #[arg(long = "remove-header", value_name = "NAME")]
    remove_headers: Vec<String>,
    /// A label for operators, KEY=VALUE (repeatable); replaces one of the same key.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Remove this label (repeatable).
    #[arg(long = "remove-label", value_name = "KEY")]
    remove_labels: Vec<String>,
    /// The delays between attempts, e.g. 5s,5m,30m (attempts = delays + 1).
    #[arg(long, conflicts_with = "retry_exponential", value_parser = parse_schedule)]
    retry_schedule: Option<RetrySchedule>,
    /// Exponential backoff instead of a list, e.g. base=5s,factor=2,cap=1h,attempts=10.
    #[arg(long, value_name = "base=D,factor=F,cap=D,attempts=N", value_parser = parse_exponential)]
    retry_exponential: Option<Exponential>,
    /// Most requests per second to this endpoint, per agent (0: no limit).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_RATE_LIMIT)))]
    rate_limit: Option<u32>,
    /// Disable the subscription after this many consecutive failed attempts (default 10).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DISABLE_AFTER)))]
    disable_after: Option<u32>,
    /// ...and only once the failures have gone on this long, e.g. 1h (0s: no minimum).
    #[arg(long, value_parser = herald_core::duration::parse)]
    disable_min_failing: Option<Duration>,
    /// Per-attempt timeout, e.g. 15s.
    #[arg(long, value_parser = herald_core::duration::parse)]
    timeout: Option<Duration>,
    /// Regions whose agents deliver it, comma-separated (default: all).
    #[arg(long, value_delimiter = ',', conflicts_with = "all_regions")]
    regions: Option<Vec<String>>,
    /// Delivered by the agents of every region again (clears --regions).
    #[arg(long)]
    all_regions: bool,
    /// Attempts in flight to this endpoint at once, per agent (default 16).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_MAX_IN_FLIGHT)))]
    max_in_flight: Option<u32>,
    /// Send the emitter's W3C traceparent on to the endpoint: on or off (default off).
    #[arg(long, value_parser = on_off(), num_args = 0..=1, default_missing_value = "on")]
    trace_context: Option<bool>,
    /// Deliver through this HTTP proxy, http://[user:password@]host:port (for receivers that
    /// accept traffic only from known addresses); `agent` for the agent's --egress-proxy (the
    /// default), `direct` for none.
    #[arg(long, value_name = "URL|agent|direct", conflicts_with = "no_egress_proxy", value_parser = parse_egress_proxy)]
    egress_proxy: Option<Egress>,
    /// Deliver directly, even where the agent has an --egress-proxy.
    #[arg(long)]
    no_egress_proxy: bool,
    /// Mutual TLS to the receiver: the client certificate chain to present (PEM file, leaf
    /// first); with --client-key.
    #[arg(long, value_name = "FILE", requires = "client_key", conflicts_with = "no_client_cert", value_parser = read_pem_file)]
    client_cert: Option<String>,
    /// The client certificate's private key (PEM file). Sealed at rest and never shown again.
    #[arg(long, value_name = "FILE", requires = "client_cert", value_parser = read_pem_file)]
    client_key: Option<String>,
    /// Stop presenting a client certificate.
    #[arg(long)]
    no_client_cert: bool,
    /// OAuth2 client credentials: the token endpoint the agent fetches bearer tokens from.
    #[arg(long, value_name = "URL", conflicts_with = "no_oauth2")]
    oauth2_token_url: Option<String>,
    /// OAuth2 client id.
    #[arg(long, value_name = "ID")]
    oauth2_client_id: Option<String>,
    /// OAuth2 client secret (sealed at rest; kept on update when not given).
    #[arg(long, value_name = "SECRET")]
    oauth2_client_secret: Option<String>,
    /// OAuth2 `scope` of the token request.
    #[arg(long, value_name = "SCOPE")]
    oauth2_scope: Option<String>,
    /// OAuth2 `audience` of the token request.
    #[arg(long, value_name = "AUDIENCE")]
    oauth2_audience: Option<String>,
    /// Stop sending OAuth2 bearer tokens.
    #[arg(long)]
    no_oauth2: bool,
    /// Accept event types that are not in the catalogue (yet); without it, a new pattern that
    /// selects no registered type is refused with the types it could mean.
    #[arg(long)]
    allow_unregistered: bool,
}

impl Fields {
    /// The first flag given that only undoes something a subscription has (`--no-filter`,
    /// `--remove-header`, …): meaningless for a new one, so `create` refuses it rather than
    /// leave the caller believing it did something.
    fn changes_only(&self) -> Option<&'static str> {
        [
            (self.no_filter, "--no-filter"),
            (!self.remove_headers.is_empty(), "--remove-header"),
            (!self.remove_labels.is_empty(), "--remove-label"),
            (self.all_regions, "--all-regions"),
            (self.no_egress_proxy, "--no-egress-proxy"),
            (self.no_client_cert, "--no-client-cert"),
            (self.no_oauth2, "--no-oauth2"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag))
    }
}

/// A PEM file's text, read as the command line is parsed (at most 64 KiB).
fn read_pem_file(path: &str) -> Result<String, String> {
    read_small_file(path, 64 * 1024)
}

/// A test payload given inline or as @FILE, checked to be JSON as the command line is parsed.
fn parse_test_data(text: &str) -> Result<String, String> {
    let limit = herald_core::limits::DEFAULT_MAX_PAYLOAD_BYTES;
    let text = match text.strip_prefix('@') {
        Some(path) => read_small_file(path, limit)?,
        None => text.to_owned(),
    };
    herald_core::validate::json_payload(text.as_bytes(), limit).map_err(|e| e.reason)?;
    Ok(text)
}

/// A payload filter given inline or as @FILE, checked as the command line is parsed.
fn parse_payload_filter(text: &str) -> Result<String, String> {
    let text = match text.strip_prefix('@') {
        Some(path) => read_small_file(path, herald_core::payload_filter::MAX_FILTER_BYTES)?,
        None => text.to_owned(),
    };
    match herald_core::payload_filter::PayloadFilter::parse(&text) {
        Ok(Some(filter)) => Ok(filter.as_str().to_owned()),
        Ok(None) => Err("is empty (use --no-filter to remove a filter)".to_owned()),
        Err(e) => Err(e.reason),
    }
}

/// A text file of at most `limit` bytes.
fn read_small_file(path: &str, limit: usize) -> Result<String, String> {
    herald_core::read_limited::read_text_file_limited(std::path::Path::new(path), limit as u64)
        .map_err(|e| format!("{path}: {e}"))
}

fn parse_egress_proxy(text: &str) -> Result<Egress, String> {
    herald_proto::words::parse_egress(text).map_err(|e| e.to_string())
}

fn parse_format(text: &str) -> Result<PayloadFormat, String> {
    PayloadFormat::parse(text).map_err(|e| e.reason)
}

fn parse_envelope(text: &str) -> Result<Envelope, String> {
    Envelope::parse(text).map_err(|e| e.reason)
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| "expected KEY=VALUE".to_owned())?;
    let key = key.trim();
    if key.is_empty() {
        return Err("the key is empty".to_owned());
    }
    Ok((key.to_owned(), value.trim().to_owned()))
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| "expected NAME=VALUE".to_owned())?;
    Ok((name.trim().to_owned(), value.to_owned()))
}

fn parse_schedule(text: &str) -> Result<RetrySchedule, String> {
    // An empty list on the wire means the default schedule, not "no retries".
    if text.trim().is_empty() {
        return Err("name the delays, e.g. 5s,5m,30m".into());
    }
    RetrySchedule::parse(text).map_err(|e| e.reason)
}

/// A switch's value: `on` or `off` (`true`/`yes`, `false`/`no` too).
fn on_off() -> impl clap::builder::TypedValueParser<Value = bool> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser as _};
    PossibleValuesParser::new([
        PossibleValue::new("on").aliases(["true", "yes"]),
        PossibleValue::new("off").aliases(["false", "no"]),
    ])
    // The parser hands back what was typed, an alias included.
    .map(|value| matches!(value.as_str(), "on" | "true" | "yes"))
}

fn parse_exponential(text: &str) -> Result<Exponential, String> {
    Exponential::parse(text).map_err(|e| e.reason)
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// The tenant whose events it receives.
    #[arg(long)]
    tenant: String,
    /// The endpoint URL.
    #[arg(long)]
    url: String,
    /// Signature scheme: v1 (HMAC-SHA256, shared whsec_ secret) or v1a (ed25519: a whsk_
    /// signing key, and a whpk_ public key for receivers).
    #[arg(long, default_value = "v1", value_parser = ["v1", "v1a"])]
    signature: String,
    /// Makes the create safe to run again (after a timeout, from a script run twice): the same
    /// tenant, key and flags within 24 hours answer the subscription the first run made
    /// instead of making another. Up to 255 printable ASCII characters.
    #[arg(long, default_value = "")]
    idempotency_key: String,
    #[command(flatten)]
    fields: Fields,
}

#[derive(clap::Args)]
pub struct UpdateArgs {
    /// Subscription id.
    id: String,
    /// The endpoint URL.
    #[arg(long)]
    url: Option<String>,
    /// The revision you read (default: the current one, read just before the update).
    #[arg(long)]
    revision: Option<i64>,
    #[command(flatten)]
    fields: Fields,
}

impl CreateArgs {
    /// The request that creates the subscription.
    fn into_request(self) -> anyhow::Result<pb::CreateSubscriptionRequest> {
        if self.fields.events.as_ref().is_none_or(Vec::is_empty) {
            return Err(usage(
                "--events is required: the event types to receive, e.g. 'order.*'",
            ));
        }
        if let Some(flag) = self.fields.changes_only() {
            return Err(usage(format!(
                "{flag} changes an existing subscription: give it to `subscription update`"
            )));
        }
        let signature_scheme = herald_proto::words::parse_signature(&self.signature)
            .unwrap_or(pb::SignatureScheme::HmacSha256);
        let mut sub = pb::Subscription {
            tenant: self.tenant,
            url: self.url,
            signature_scheme: signature_scheme as i32,
            ..Default::default()
        };
        let allow_unregistered = self.fields.apply(&mut sub);
        Ok(pb::CreateSubscriptionRequest {
            subscription: Some(sub),
            allow_unregistered,
            idempotency_key: self.idempotency_key,
        })
    }
}

impl Fields {
    /// Sets the fields given on `sub`; returns whether unregistered event types are allowed.
    fn apply(self, sub: &mut pb::Subscription) -> bool {
        if let Some(events) = self.events {
            sub.event_types = events.into_iter().map(|e| e.trim().to_owned()).collect();
        }
        if let Some(format) = self.format {
            sub.format = herald_proto::convert::wire_format(format) as i32;
        }
        if let Some(envelope) = self.envelope {
            sub.envelope = herald_proto::convert::wire_envelope(envelope) as i32;
        }
        if let Some(description) = self.description {
            sub.description = description;
        }
        if let Some(filter) = self.filter {
            sub.payload_filter = filter;
        }
        if self.no_filter {
            sub.payload_filter.clear();
        }
        // Header names are matched as HTTP matches them, without case.
        let same_name = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
        sub.headers.retain(|name, _| {
            !self.remove_headers.iter().any(|gone| same_name(gone, name))
                && !self.headers.iter().any(|(given, _)| same_name(given, name))
        });
        for (name, value) in self.headers {
            sub.headers.insert(name, value);
        }
        for key in &self.remove_labels {
            sub.labels.remove(key);
        }
        for (key, value) in self.labels {
            sub.labels.insert(key, value);
        }
        if let Some(schedule) = self.retry_schedule {
            sub.retry = Some(retry_policy(&schedule));
        }
        if let Some(backoff) = self.retry_exponential {
            sub.retry = Some(exponential_policy(&backoff));
        }
        if let Some(rate) = self.rate_limit {
            sub.rate_limit = rate;
        }
        if let Some(after) = self.disable_after {
            sub.disable_after = after;
        }
        if let Some(min) = self.disable_min_failing {
            sub.disable_min_failing = Some(duration(min));
        }
        if let Some(timeout) = self.timeout {
            sub.timeout = Some(duration(timeout));
        }
        if let Some(regions) = self.regions {
            sub.regions = regions;
        }
        if self.all_regions {
            sub.regions.clear();
        }
        if let Some(max) = self.max_in_flight {
            sub.max_in_flight = max;
        }
        if let Some(send) = self.trace_context {
            sub.send_trace_context = send;
        }
        let egress = match self.egress_proxy {
            _ if self.no_egress_proxy => Some(Egress::Direct),
            given => given,
        };
        if let Some(egress) = egress {
            herald_proto::convert::set_egress(sub, &egress);
        }
        if self.no_client_cert {
            sub.client_cert.clear();
            sub.client_key.clear();
        }
        if let (Some(cert), Some(key)) = (self.client_cert, self.client_key) {
            sub.client_cert = cert;
            sub.client_key = key;
        }
        if self.no_oauth2 {
            sub.oauth2 = None;
        }
        let oauth2_given = [
            &self.oauth2_token_url,
            &self.oauth2_client_id,
            &self.oauth2_client_secret,
            &self.oauth2_scope,
            &self.oauth2_audience,
        ]
        .iter()
        .any(|flag| flag.is_some());
        if oauth2_given {
            // Given fields replace the stored ones; the secret, when not given, stays.
            let oauth2 = sub.oauth2.get_or_insert_with(Default::default);
            for (flag, field) in [
                (self.oauth2_token_url, &mut oauth2.token_url),
                (self.oauth2_client_id, &mut oauth2.client_id),
                (self.oauth2_client_secret, &mut oauth2.client_secret),
                (self.oauth2_scope, &mut oauth2.scope),
                (self.oauth2_audience, &mut oauth2.audience),
            ] {
                if let Some(value) = flag {
                    *field = value;
                }
            }
        }
        self.allow_unregistered
    }
}

pub async fn run(cmd: Command, server: &Server, format: Format) -> anyhow::Result<()> {
    let mut client = SubscriptionsClient::new(server.channel().await?);
    match cmd {
        Command::Create(args) => {
            let answer = client
                .create_subscription(args.into_request()?)
                .await
                .map_err(status_error)?;
            let replayed = herald_proto::idempotency::was_replayed(&answer);
            let created = answer.into_inner();
            if replayed {
                output::note(&format!(
                    "{} was made by an earlier create with this idempotency key: nothing new \
                     was created (shown as it is now)",
                    created.id
                ));
            }
            output::object(format, &output::subscription(&created, true))?;
        }
        Command::Import { file } => import(&mut client, &file, format).await?,
        Command::Get {
            id,
            show_secret,
            watch,
        } => {
            let mut shown = Watch::default();
            loop {
                let sub = client
                    .get_subscription(pb::GetSubscriptionRequest {
                        id: id.clone(),
                        show_secrets: show_secret,
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                shown.show(output::subscription(&sub, show_secret), |value| {
                    output::object(format, value)
                })?;
                if !watch || !Watch::next_round().await {
                    break;
                }
            }
        }
        Command::List {
            tenant,
            page_size,
            page_token,
            watch,
        } => {
            let mut shown = Watch::default();
            loop {
                let page = client
                    .list_subscriptions(pb::ListSubscriptionsRequest {
                        tenant: tenant.clone().unwrap_or_default(),
                        page_size,
                        page_token: page_token.clone(),
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                let items: Vec<_> = page
                    .subscriptions
                    .iter()
                    .map(|s| output::subscription(s, false))
                    .collect();
                let next = page.next_page_token;
                shown.show(serde_json::Value::Array(items), |items| {
                    output::list(
                        format,
                        "subscriptions",
                        items.as_array().map_or(&[][..], Vec::as_slice),
                        &[
                            "id", "tenant", "url", "events", "format", "enabled", "revision",
                        ],
                        &next,
                    )
                })?;
                if !watch || !Watch::next_round().await {
                    break;
                }
            }
        }
        Command::Update(args) => {
            let mut sub = client
                .get_subscription(pb::GetSubscriptionRequest {
                    id: args.id,
                    show_secrets: false,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let expected_revision = args.revision.unwrap_or(sub.revision);
            let read = sub.clone();
            if let Some(url) = args.url {
                sub.url = url;
            }
            let allow_unregistered = args.fields.apply(&mut sub);
            // (A stale --revision still goes to the server, to be told so.)
            if sub == read && args.revision.is_none_or(|given| given == read.revision) {
                // Nothing given, or only what it holds: no new revision, no audit entry, no
                // change sent to every agent.
                output::object(format, &output::subscription(&sub, false))?;
                output::note(&format!(
                    "nothing to change: {} already holds what was given (no update made)",
                    sub.id
                ));
                return Ok(());
            }
            let updated = client
                .update_subscription(pb::UpdateSubscriptionRequest {
                    subscription: Some(sub),
                    expected_revision,
                    allow_unregistered,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            output::object(format, &output::subscription(&updated, false))?;
        }
        Command::Delete { id, revision } => {
            client
                .delete_subscription(pb::DeleteSubscriptionRequest {
                    id: id.clone(),
                    expected_revision: revision,
                })
                .await
                .map_err(status_error)?;
            output::object(format, &serde_json::json!({ "deleted": id }))?;
        }
        Command::Enable { id, replay_parked } => {
            let sub = client
                .enable_subscription(pb::EnableSubscriptionRequest { id, replay_parked })
                .await
                .map_err(status_error)?
                .into_inner();
            output::object(format, &output::subscription(&sub, false))?;
            // Parked deliveries skipped are logged as such, and can still be sent: say how,
            // when this call turned delivery on (it set the time, as the change's).
            if let Some(at) = sub.skip_parked_before.as_ref()
                && sub.updated_at.as_ref() == Some(at)
            {
                let since =
                    humantime::format_rfc3339_millis(herald_proto::convert::system_time(at));
                output::note(&format!(
                    "deliveries parked while {id} was disabled are skipped (logged as skipped); \
                     to send them after all: herald deliveries replay --subscription {id} \
                     --since {since} --outcome skipped",
                    id = sub.id,
                ));
            }
        }
        Command::Test {
            id,
            event_type,
            data,
        } => {
            let attempt = client
                .test_subscription(pb::TestSubscriptionRequest {
                    id,
                    event_type: event_type.unwrap_or_default(),
                    payload: data.map(String::into_bytes).unwrap_or_default(),
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .attempt
                .unwrap_or_default();
            output::object(format, &output::attempt(&attempt))?;
            if !(200..300).contains(&attempt.status_code) {
                anyhow::bail!(
                    "the test was not accepted: {}",
                    if attempt.status_code == 0 {
                        format!("{} ({})", attempt.error, attempt.error_kind)
                    } else {
                        format!("the endpoint answered {}", attempt.status_code)
                    }
                );
            }
        }
        Command::Health { id } => {
            let health = client
                .get_subscription_health(pb::GetSubscriptionHealthRequest { id })
                .await
                .map_err(status_error)?
                .into_inner();
            output::object(format, &output::health(&health))?;
        }
        Command::Disable { id, reason } => {
            let sub = client
                .disable_subscription(pb::DisableSubscriptionRequest { id, reason })
                .await
                .map_err(status_error)?
                .into_inner();
            output::object(format, &output::subscription(&sub, false))?;
        }
        Command::RotateSecret { id, grace } => {
            let sub = client
                .rotate_secret(pb::RotateSecretRequest {
                    id,
                    grace: Some(duration(grace)),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            output::object(format, &output::subscription(&sub, true))?;
        }
    }
    Ok(())
}

/// The largest import file read.
const MAX_IMPORT_BYTES: u64 = 16 * 1024 * 1024;
/// The most entries one import takes.
const MAX_IMPORT_ENTRIES: usize = 10_000;

/// `create`'s flags, parsed from an import entry.
#[derive(clap::Parser)]
#[command(no_binary_name = true)]
struct ImportEntry {
    #[command(flatten)]
    args: CreateArgs,
}

/// The command-line form of one import entry: `{"url": "…", "header": ["A=1"]}` →
/// `--url … --header A=1`.
fn entry_flags(entry: &serde_json::Value) -> anyhow::Result<Vec<String>> {
    let map = entry
        .as_object()
        .context("an entry is not a map of create's flags")?;
    let mut flags = Vec::new();
    for (key, value) in map {
        let flag = format!("--{}", key.replace('_', "-"));
        let scalar = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Number(n) => Ok(n.to_string()),
            other => Err(anyhow::anyhow!("{key}: {other} is not a string or number")),
        };
        match value {
            serde_json::Value::Null | serde_json::Value::Bool(false) => {}
            serde_json::Value::Bool(true) => flags.push(flag),
            // Each value joined to its flag (`--flag=value`), so that a value starting with `-`
            // is read as the value, not as another flag.
            serde_json::Value::Array(items) if key == "events" || key == "regions" => {
                let items: Vec<String> = items.iter().map(scalar).collect::<Result<_, _>>()?;
                flags.push(format!("{flag}={}", items.join(",")));
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    flags.push(format!("{flag}={}", scalar(item)?));
                }
            }
            // A filter written as a map in the file is the filter's JSON.
            serde_json::Value::Object(_) if key == "filter" => {
                flags.push(format!("{flag}={value}"));
            }
            serde_json::Value::Object(pairs) if key == "header" || key == "headers" => {
                for (name, value) in pairs {
                    flags.push(format!("--header={name}={}", scalar(value)?));
                }
            }
            serde_json::Value::Object(pairs) if key == "label" || key == "labels" => {
                for (name, value) in pairs {
                    flags.push(format!("--label={name}={}", scalar(value)?));
                }
            }
            other => flags.push(format!("{flag}={}", scalar(other)?)),
        }
    }
    Ok(flags)
}

/// `text` (an error about `entry`) with the entry's secret values hidden: clap repeats the
/// value it refuses, and a proxy URL holds its password, a header value an API key.
fn hide_secrets(text: &str, entry: &serde_json::Value) -> String {
    let mut secrets: Vec<String> = ["egress_proxy", "oauth2_client_secret"]
        .iter()
        .filter_map(|key| entry[*key].as_str().map(str::to_owned))
        .collect();
    for key in ["header", "headers"] {
        match &entry[key] {
            serde_json::Value::Object(pairs) => {
                secrets.extend(pairs.values().filter_map(|v| v.as_str().map(str::to_owned)))
            }
            serde_json::Value::Array(items) => secrets.extend(items.iter().filter_map(|item| {
                item.as_str()
                    .and_then(|h| h.split_once('='))
                    .map(|(_, value)| value.to_owned())
            })),
            _ => {}
        }
    }
    let mut text = text.to_owned();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(secret.as_str(), "(hidden)");
    }
    text
}

/// `herald subscription import FILE`.
async fn import(
    client: &mut SubscriptionsClient<herald_proto::bearer::AuthedChannel>,
    file: &str,
    format: Format,
) -> anyhow::Result<()> {
    let text = crate::input::read_text(file, MAX_IMPORT_BYTES)?;
    let entries: Vec<serde_json::Value> =
        crate::input::parse_yaml(file, &text, "a YAML or JSON list of subscriptions")?;
    if entries.len() > MAX_IMPORT_ENTRIES {
        anyhow::bail!(
            "{file} has {} entries; one import takes at most {MAX_IMPORT_ENTRIES}",
            entries.len()
        );
    }
    let total = entries.len();
    let mut results = Vec::with_capacity(total);
    let mut refused = 0;
    // Entries an earlier run (or create) with their key had made already.
    let mut kept = 0;
    let mut keys = ImportKeys::default();
    for (index, entry) in entries.iter().enumerate() {
        let outcome = async {
            let flags = entry_flags(entry)?;
            let mut parsed = <ImportEntry as clap::Parser>::try_parse_from(&flags)
                .map_err(|e| anyhow::anyhow!("{}", entry_error(&e, entry)))?;
            let keyed_here = parsed.args.idempotency_key.is_empty();
            if keyed_here {
                parsed.args.idempotency_key = keys.next(&parsed.args);
            }
            let answer = client
                .create_subscription(parsed.args.into_request()?)
                .await
                .map_err(|status| {
                    if keyed_here && status.code() == tonic::Code::AlreadyExists {
                        anyhow::anyhow!(
                            "an entry of this tenant, URL and event types was imported within \
                             the last 24 hours with other fields (see it with subscription \
                             list); give this one an idempotency-key of its own to create \
                             another"
                        )
                    } else {
                        status_error(status)
                    }
                })?;
            // Answered from an earlier import's create (or any create with the entry's key).
            let done = if herald_proto::idempotency::was_replayed(&answer) {
                "already created"
            } else {
                "created"
            };
            anyhow::Ok((done, answer.into_inner()))
        }
        .await;
        let number = index + 1;
        match outcome {
            Ok((done, created)) => {
                if done != "created" {
                    kept += 1;
                }
                output::note(&format!(
                    "[{number}/{total}] {done} {} ({})",
                    created.id, created.url
                ));
                results.push(serde_json::json!({
                    "entry": number, "done": done, "id": created.id, "tenant": created.tenant, "url": created.url, "error": "",
                }));
            }
            Err(err) => {
                refused += 1;
                output::note(&format!("[{number}/{total}] refused: {err:#}"));
                results.push(serde_json::json!({
                    "entry": number, "done": "", "id": "", "tenant": entry["tenant"], "url": entry["url"], "error": format!("{err:#}"),
                }));
            }
        }
    }
    output::list(
        format,
        "results",
        &results,
        &["entry", "done", "id", "tenant", "url", "error"],
        "",
    )?;
    output::note(&format!(
        "{} created, {kept} already created, {refused} refused",
        total - refused - kept
    ));
    if refused == total && total > 0 {
        anyhow::bail!("all {total} entries were refused (see above); none was created");
    }
    if refused > 0 {
        anyhow::bail!(
            "{refused} of {total} entries were refused (see above); the others exist (created \
             now or before)"
        );
    }
    Ok(())
}

/// The idempotency keys an import gives its entries that name none, so that running an import
/// again (after fixing an entry it refused, or after a run cut short) makes no second
/// subscription for the entries already created: a digest of what names the entry (its
/// tenant, URL and event types; never its secrets, such as header values), and which of the
/// file's entries so named it is. An entry changed in another field since it was created is
/// refused as the key's other request.
#[derive(Default)]
struct ImportKeys {
    seen: std::collections::HashMap<String, usize>,
}

impl ImportKeys {
    fn next(&mut self, args: &CreateArgs) -> String {
        use sha2::Digest as _;
        let mut hash = sha2::Sha256::new();
        // The set of event types, however the entry spells the list.
        let mut events: Vec<&str> = (args.fields.events.iter().flatten())
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
            .collect();
        events.sort_unstable();
        events.dedup();
        for part in [args.tenant.as_str(), args.url.as_str()]
            .into_iter()
            .chain(events)
        {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part.as_bytes());
        }
        let digest: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
        let nth = self.seen.entry(digest.clone()).or_default();
        *nth += 1;
        format!("import-{digest}-{nth}")
    }
}

/// What was wrong with an entry, in the one line clap's error starts with (its usage text
/// would name the parser, not the file), secrets hidden.
fn entry_error(err: &clap::Error, entry: &serde_json::Value) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    // A key no flag of create's has: said in the file's words, not as a flag.
    if err.kind() == ErrorKind::UnknownArgument
        && let Some(ContextValue::String(flag)) = err.get(ContextKind::InvalidArg)
    {
        let flag = flag.trim_start_matches('-');
        let flag = flag.split_once('=').map_or(flag, |(flag, _)| flag);
        // The key as the file spells it (`bogus_key` or `bogus-key`).
        let key = entry
            .as_object()
            .and_then(|map| map.keys().find(|key| key.replace('_', "-") == flag))
            .map_or(flag, String::as_str);
        return hide_secrets(
            &format!(
                "unknown key {key:?}: the keys are `herald subscription create`'s flags \
                 (tenant, url, events, format, header, …)"
            ),
            entry,
        );
    }
    let rendered = err.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    hide_secrets(first.trim_start_matches("error: ").trim(), entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(entry: &serde_json::Value) -> Result<ImportEntry, String> {
        let flags = entry_flags(entry).map_err(|e| e.to_string())?;
        <ImportEntry as clap::Parser>::try_parse_from(&flags).map_err(|e| entry_error(&e, entry))
    }

    #[test]
    fn an_unknown_key_is_named_as_the_file_has_it() {
        let entry = serde_json::json!({
            "tenant": "shop-1",
            "url": "https://shop.example/hooks",
            "events": ["order.*"],
            "bogus_key": "x",
        });
        let err = parse(&entry).err().unwrap_or_default();
        assert!(err.starts_with("unknown key \"bogus_key\""), "{err}");
        let on = serde_json::json!({
            "tenant": "shop-1",
            "url": "https://shop.example/hooks",
            "events": ["order.*"],
            "trace_context": true,
        });
        assert_eq!(
            parse(&on).map(|p| p.args.fields.trace_context),
            Ok(Some(true))
        );
        for (given, meant) in [
            ("on", true),
            ("true", true),
            ("yes", true),
            ("off", false),
            ("false", false),
            ("no", false),
        ] {
            let entry = serde_json::json!({
                "tenant": "shop-1",
                "url": "https://shop.example/hooks",
                "events": ["order.*"],
                "trace_context": given,
            });
            assert_eq!(
                parse(&entry).map(|p| p.args.fields.trace_context),
                Ok(Some(meant)),
                "{given}"
            );
        }
    }

    #[test]
    fn an_import_value_starting_with_a_dash_is_a_value() {
        let entry = serde_json::json!({
            "tenant": "shop-1",
            "url": "https://shop.example/hooks",
            "events": ["order.*"],
            "description": "-- legacy feed",
        });
        let parsed = parse(&entry).expect("parsed");
        assert_eq!(
            parsed.args.fields.description.as_deref(),
            Some("-- legacy feed")
        );
    }

    #[test]
    fn an_import_entry_sets_labels_as_a_map() {
        let entry = serde_json::json!({
            "tenant": "shop-1",
            "url": "https://shop.example/hooks",
            "events": ["order.*"],
            "labels": {"erp": "sap", "team": "orders"},
        });
        let parsed = parse(&entry).expect("parsed");
        let mut sub = pb::Subscription::default();
        parsed.args.fields.apply(&mut sub);
        assert_eq!(sub.labels.len(), 2);
        assert_eq!(sub.labels["erp"], "sap");
    }

    #[test]
    fn an_import_error_hides_the_entrys_secrets() {
        let entry = serde_json::json!({
            "tenant": "shop-1",
            "url": "https://shop.example/hooks",
            "events": ["order.*"],
            "egress_proxy": "ftp://user:hunter2@proxy.example:8080",
        });
        let err = parse(&entry).err().expect("refused");
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("egress-proxy"), "{err}");
    }

    #[test]
    fn an_import_error_is_one_line_about_the_entry() {
        let entry = serde_json::json!({
            "tenant": "shop-1",
            "url": "https://shop.example/hooks",
            "events": ["order.*"],
            "colour": "blue",
        });
        let err = parse(&entry).err().expect("refused");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("colour"), "{err}");
        assert!(
            !err.contains("Usage") && !err.contains("herald-cli"),
            "{err}"
        );
    }
}
