//! What an authenticated caller may see and change: its identity (name, role, and the tenants
//! and regions it is scoped to), and the checks every service makes with it.
//!
//! The rule, the same in every service: an object of a tenant outside the caller's scope does
//! not exist for it (`NOT_FOUND`, the same answer as for an id nobody has), lists leave such
//! objects out, and creating one for such a tenant is `PERMISSION_DENIED`. Things every tenant
//! shares are changed only by identities scoped to all tenants (the event-type catalogue,
//! which every identity may read), and listed only by them where the list would show other
//! tenants (the fleet of agents).

use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock};

use herald_core::validate::quoted;

/// What a caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The read-only operator API.
    Read,
    /// The whole operator API.
    Admin,
    /// The agent streams.
    Agent,
}

impl Role {
    /// The role's name in the tokens file.
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Admin => "admin",
            Role::Agent => "agent",
        }
    }

    /// Whether this role may call a method that needs `needed`.
    pub(crate) fn covers(self, needed: Role) -> bool {
        self == needed || (self == Role::Admin && needed == Role::Read)
    }
}

/// A set of names an identity is limited to (tenants, regions), or no limit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Scope {
    /// Every name.
    #[default]
    All,
    /// Only these names (never empty).
    Only(BTreeSet<String>),
}

impl Scope {
    /// Whether `name` lies within the scope.
    pub fn allows(&self, name: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Only(names) => names.contains(name),
        }
    }

    /// The names, when the scope is limited.
    pub fn names(&self) -> Option<&BTreeSet<String>> {
        match self {
            Scope::All => None,
            Scope::Only(names) => Some(names),
        }
    }

    /// Whether the scope has no limit.
    pub fn is_all(&self) -> bool {
        matches!(self, Scope::All)
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::All => f.write_str("all"),
            Scope::Only(names) => {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                f.write_str(&names.join(","))
            }
        }
    }
}

/// Who a caller is and what it may reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The name the caller is recorded under (a token's `name=`, or one derived from it).
    pub name: String,
    /// What the caller may call.
    pub role: Role,
    /// The tenants whose objects the caller may see and change.
    pub tenants: Scope,
    /// For agents: the regions they may serve.
    pub regions: Scope,
}

/// The identity of every caller when the API is open (no tokens configured): an admin of
/// every tenant.
static OPEN: LazyLock<Arc<Identity>> = LazyLock::new(|| {
    Arc::new(Identity {
        name: "anonymous".into(),
        role: Role::Admin,
        tenants: Scope::All,
        regions: Scope::All,
    })
});

/// Herald itself, as the audit log names it for the changes it makes on its own (an endpoint
/// disabled for its failures or for answering 410 Gone).
pub static HERALD: LazyLock<Identity> = LazyLock::new(|| Identity {
    name: "herald".into(),
    role: Role::Admin,
    tenants: Scope::All,
    regions: Scope::All,
});

/// The authenticated caller, put into each request's extensions by the auth layer.
#[derive(Clone, Debug)]
pub struct Caller(pub Arc<Identity>);

/// The caller of `request`: the identity the auth layer found, or, with the API open, an
/// admin of every tenant.
pub fn caller<T>(request: &tonic::Request<T>) -> Arc<Identity> {
    match request.extensions().get::<Caller>() {
        Some(Caller(identity)) => identity.clone(),
        None => OPEN.clone(),
    }
}

impl Identity {
    /// Whether the caller may see the objects of `tenant`.
    pub fn sees(&self, tenant: &str) -> bool {
        self.tenants.allows(tenant)
    }

    /// Whether the caller may see secret values of `tenant`'s objects (only admins may).
    pub fn sees_secrets_of(&self, tenant: &str) -> bool {
        self.role == Role::Admin && self.sees(tenant)
    }

    /// Refuses to create or move anything into a tenant outside the scope.
    pub fn may_act_for(&self, tenant: &str) -> Result<(), tonic::Status> {
        if self.sees(tenant) {
            return Ok(());
        }
        Err(tonic::Status::permission_denied(format!(
            "{} may act only for the tenants {}, not for {}",
            self.name,
            self.tenants,
            quoted(tenant)
        )))
    }

    /// Refuses what every tenant shares to an identity scoped to some tenants; `what` names
    /// the shared thing (`change the event-type catalogue`).
    pub fn may_reach_shared(&self, what: &str) -> Result<(), tonic::Status> {
        if self.tenants.is_all() {
            return Ok(());
        }
        Err(tonic::Status::permission_denied(format!(
            "{} is scoped to the tenants {}: only an identity of every tenant may {what}",
            self.name, self.tenants
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scoped(tenants: &[&str]) -> Identity {
        Identity {
            name: "shop-a-admin".into(),
            role: Role::Admin,
            tenants: Scope::Only(tenants.iter().map(|t| t.to_string()).collect()),
            regions: Scope::All,
        }
    }

    #[test]
    fn a_scoped_identity_sees_and_acts_only_for_its_tenants() {
        let a = scoped(&["shop-a", "shop-c"]);
        assert!(a.sees("shop-a") && a.sees("shop-c") && !a.sees("shop-b"));
        assert!(a.may_act_for("shop-a").is_ok());
        let refused = a.may_act_for("shop-b").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(refused.message().contains("shop-a,shop-c"), "{refused:?}");
        assert!(a.may_reach_shared("list agents").is_err());
        assert!(a.sees_secrets_of("shop-a") && !a.sees_secrets_of("shop-b"));
        let reader = Identity {
            role: Role::Read,
            ..scoped(&["shop-a"])
        };
        assert!(!reader.sees_secrets_of("shop-a"));
    }

    #[test]
    fn the_open_api_is_an_admin_of_every_tenant() {
        let request = tonic::Request::new(());
        let open = caller(&request);
        assert!(open.tenants.is_all() && open.role == Role::Admin);
    }
}
