//! A whole Herald in one value: a real etcd, a control plane on it, an agent connected to the
//! control plane and trusting a test CA, and an HTTPS receiver with a certificate from that CA.
//! Most scenarios start one of these and then tell their story; those that start their own
//! control planes add an [`AgentAndReceiver`] to them.

use std::time::{SystemTime, UNIX_EPOCH};

use herald_core::signing::{self, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, SigningSecret};
use herald_proto::v1 as pb;

use crate::{
    Agent, AgentOptions, ConfigStore, ControlPlane, Etcd, ReceivedRequest, Receiver, TestCa,
};

/// etcd, control plane, agent and receiver, started together.
pub struct World {
    /// The agent.
    pub agent: Agent,
    /// The control plane.
    pub control_plane: ControlPlane,
    /// The webhook receiver.
    pub receiver: Receiver,
    /// The CA behind the receiver's certificate.
    pub ca: TestCa,
    /// etcd (kept last so it outlives the servers using it).
    pub etcd: Etcd,
}

/// An agent connected to a control plane and an HTTPS receiver whose certificate is from a
/// test CA the agent trusts: what delivers in a scenario that starts its control planes itself.
pub struct AgentAndReceiver {
    /// The agent.
    pub agent: Agent,
    /// The webhook receiver.
    pub receiver: Receiver,
    /// The CA behind the receiver's certificate.
    pub ca: TestCa,
}

impl AgentAndReceiver {
    /// Starts a receiver, and an agent connected to `control_plane` with `options` that
    /// trusts the receiver's CA.
    pub async fn start(control_plane: &str, options: AgentOptions) -> anyhow::Result<Self> {
        let ca = TestCa::new();
        let receiver = Receiver::start(&ca).await?;
        let agent = Agent::start(
            control_plane,
            AgentOptions {
                trusted_ca: Some(ca.ca_pem()),
                ..options
            },
        )
        .await?;
        Ok(AgentAndReceiver {
            agent,
            receiver,
            ca,
        })
    }
}

impl World {
    /// Another agent on this world's control plane, trusting the receiver's CA, with
    /// `options` otherwise.
    pub async fn another_agent(&self, options: AgentOptions) -> anyhow::Result<Agent> {
        Agent::start(
            self.control_plane.url(),
            AgentOptions {
                trusted_ca: Some(self.ca.ca_pem()),
                ..options
            },
        )
        .await
    }

    /// Another agent, started with `options`, once it is connected and has applied
    /// `revision`, as every agent connected before it has. `ControlPlane::wait_applied`
    /// alone looks at the agents connected so far, which the new one may not be yet.
    pub async fn another_agent_applied(
        &self,
        options: AgentOptions,
        revision: i64,
    ) -> anyhow::Result<Agent> {
        let wait = std::time::Duration::from_secs(20);
        let agent = self.another_agent(options).await?;
        agent
            .wait_applied(&self.control_plane, revision, wait)
            .await?;
        self.control_plane.wait_applied(revision, wait).await?;
        Ok(agent)
    }

    /// Starts everything; the agent is connected when this returns.
    pub async fn start() -> anyhow::Result<World> {
        Self::start_with_log(None).await
    }

    /// Starts everything with the control plane's delivery log in `log_store` (a
    /// `postgres://` URL that further replicas can share; `None`: the embedded log).
    pub async fn start_with_log(log_store: Option<String>) -> anyhow::Result<World> {
        Self::start_configured(move |config| {
            if let Some(url) = log_store {
                config.log_store = herald_control_plane::attempts::LogStoreFlag::new(url);
            }
        })
        .await
    }

    /// Starts everything with the control plane's test defaults changed by `configure`.
    pub async fn start_configured(
        configure: impl FnOnce(&mut herald_control_plane::Config),
    ) -> anyhow::Result<World> {
        let etcd = Etcd::start().await?;
        let store = ConfigStore::Etcd(vec![etcd.endpoint()]);
        let control_plane = ControlPlane::start_configured(store, configure).await?;
        let AgentAndReceiver {
            agent,
            receiver,
            ca,
        } = AgentAndReceiver::start(control_plane.url(), AgentOptions::default()).await?;
        // The agent has config once it acked any revision (an empty etcd still has one).
        control_plane
            .wait_applied(0, std::time::Duration::from_secs(10))
            .await?;
        Ok(World {
            agent,
            control_plane,
            receiver,
            ca,
            etcd,
        })
    }
}

/// Whether `request` carries a valid Standard Webhooks signature by one of `secrets`
/// (`whsec_…` strings), with a timestamp within 5 minutes of now.
pub fn signature_verifies(request: &ReceivedRequest, secrets: &[&str]) -> bool {
    let secrets: Vec<SigningSecret> = secrets
        .iter()
        .filter_map(|s| SigningSecret::parse(s).ok())
        .collect();
    let (Some(id), Some(ts), Some(sig)) = (
        request.header(HEADER_ID),
        request
            .header(HEADER_TIMESTAMP)
            .and_then(|t| t.parse::<i64>().ok()),
        request.header(HEADER_SIGNATURE),
    ) else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    signing::verify_timestamp(ts, now, 300) && signing::verify(&secrets, sig, id, ts, &request.body)
}

/// The current signing secret of a subscription as returned by create or rotate.
pub fn secret_of(sub: &pb::Subscription) -> String {
    sub.secrets
        .first()
        .map(|s| s.secret.clone())
        .unwrap_or_default()
}
