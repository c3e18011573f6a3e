//! The receiver code an endpoint's page shows its shop: Python that checks each request's
//! signature as the endpoint's requests are signed (an HMAC secret with the `standardwebhooks`
//! package, or the ed25519 public key with `cryptography`, which that package lacks) and reads
//! the body as they are shaped (JSON or XML).

use herald_proto::v1 as pb;

/// What the receiver code checks signatures with.
pub enum ReceiverKey {
    /// `v1` signatures: the shared secret, or a placeholder until the shop reveals it.
    Secret(String),
    /// `v1a` signatures: the public key, which is never secret.
    PublicKey(String),
}

/// The receiver code's variables: how requests to one endpoint are signed and shaped.
pub struct Receiver {
    /// The key the code verifies with.
    pub key: ReceiverKey,
    /// The endpoint gets XML bodies (not parsed as JSON).
    pub xml: bool,
}

/// Shown in place of a secret the page can reveal and has not.
const HIDDEN_SECRET: &str = "whsec_… (reveal the secret above)";
/// Shown in place of a secret the page never reveals (a read-only link).
const WITHHELD_SECRET: &str = "whsec_… (the endpoint's signing secret)";

impl Receiver {
    /// The receiver code's variables for `sub`, whose newest secret is in clear only when the
    /// page reveals it; `can_reveal`: whether the page offers to.
    pub fn of(sub: &pb::Subscription, can_reveal: bool) -> Receiver {
        let placeholder = if can_reveal {
            HIDDEN_SECRET
        } else {
            WITHHELD_SECRET
        };
        let newest = sub.secrets.first();
        let key = if sub.signature_scheme() == pb::SignatureScheme::Ed25519 {
            ReceiverKey::PublicKey(newest.map(|s| s.public_key.clone()).unwrap_or_default())
        } else {
            ReceiverKey::Secret(
                newest
                    .map(|s| s.secret.clone())
                    .filter(|secret| !secret.is_empty())
                    .unwrap_or_else(|| placeholder.to_owned()),
            )
        };
        Receiver {
            key,
            xml: sub.format() == pb::Format::Xml,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(secret: &str, public_key: &str) -> pb::SigningSecret {
        pb::SigningSecret {
            secret: secret.into(),
            public_key: public_key.into(),
            ..Default::default()
        }
    }

    #[test]
    fn hmac_endpoints_get_their_secret_once_revealed_and_ed25519_ones_the_public_key() {
        let mut sub = pb::Subscription {
            secrets: vec![secret("", "")],
            ..Default::default()
        };
        let hidden = Receiver::of(&sub, true);
        assert!(matches!(&hidden.key, ReceiverKey::Secret(s) if s == HIDDEN_SECRET));
        assert!(!hidden.xml);
        let withheld = Receiver::of(&sub, false);
        assert!(matches!(&withheld.key, ReceiverKey::Secret(s) if s == WITHHELD_SECRET));
        sub.secrets = vec![secret("whsec_new", ""), secret("whsec_old", "")];
        sub.format = pb::Format::Xml as i32;
        let shown = Receiver::of(&sub, true);
        assert!(matches!(&shown.key, ReceiverKey::Secret(s) if s == "whsec_new"));
        assert!(shown.xml);
        sub.signature_scheme = pb::SignatureScheme::Ed25519 as i32;
        sub.secrets = vec![secret("whsk_signing", "whpk_public")];
        let ed25519 = Receiver::of(&sub, false);
        assert!(matches!(&ed25519.key, ReceiverKey::PublicKey(k) if k == "whpk_public"));
    }
}
