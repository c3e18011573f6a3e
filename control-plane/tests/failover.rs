//! A control-plane replica killed with SIGKILL: its agents move to another replica within
//! seconds and receive every change made meanwhile, deletions included; the fleet view on the
//! surviving replica shows them there.

use std::time::Duration;

use herald_proto::v1 as pb;
use herald_proto::v1::agents_client::AgentsClient;
use herald_proto::v1::subscriptions_client::SubscriptionsClient;
use herald_tests::herald::connect;
use herald_tests::{
    Agent, AgentOptions, Etcd, HeldPort, Receiver, TestCa, event, eventually, subscription,
};

const WAIT: Duration = Duration::from_secs(20);

/// A `herald-control-plane` process on etcd, killed when dropped.
struct Replica {
    url: String,
    child: tokio::process::Child,
    _port: HeldPort,
    _dir: tempfile::TempDir,
}

impl Replica {
    async fn start(etcd: &Etcd, name: &str, keyring: &str) -> anyhow::Result<Replica> {
        let dir = tempfile::tempdir()?;
        let port = HeldPort::new()?;
        let addr = port.addr();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald-control-plane"))
            .args(["--listen", &addr.to_string(), "--etcd", &etcd.endpoint()])
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--replica-name", name, "--allow-targets", "127.0.0.0/8"])
            .env("HERALD_SECRETS_KEY", keyring)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()?;
        let url = format!("http://{addr}");
        eventually(WAIT, "the replica to serve", || async {
            Ok(connect(&url).await.ok().map(|_| ()))
        })
        .await?;
        Ok(Replica {
            url,
            child,
            _port: port,
            _dir: dir,
        })
    }

    async fn admin(&self) -> anyhow::Result<SubscriptionsClient<tonic::transport::Channel>> {
        Ok(SubscriptionsClient::new(connect(&self.url).await?))
    }

    /// The agents this replica lists.
    async fn agents(&self) -> anyhow::Result<Vec<pb::AgentInfo>> {
        Ok(AgentsClient::new(connect(&self.url).await?)
            .list_agents(pb::ListAgentsRequest {})
            .await?
            .into_inner()
            .agents)
    }

    /// Waits until this replica lists the one agent connected through `replica` with
    /// `revision` applied.
    async fn wait_listed(&self, replica: &str, revision: i64) -> anyhow::Result<()> {
        eventually(
            WAIT,
            &format!("the agent on {replica} at {revision}"),
            || async {
                let agents = self.agents().await?;
                Ok(agents
                    .iter()
                    .any(|a| a.connected && a.replica == replica && a.applied_revision >= revision)
                    .then_some(()))
            },
        )
        .await
    }
}

#[tokio::test]
async fn a_killed_replicas_agents_move_to_another_and_miss_no_change() -> anyhow::Result<()> {
    let etcd = Etcd::start().await?;
    let keyring = herald_control_plane::sealing::Keyring::generate_entry("test")?;
    let mut first = Replica::start(&etcd, "replica-a", &keyring).await?;
    let second = Replica::start(&etcd, "replica-b", &keyring).await?;
    let ca = TestCa::new();
    let agent = Agent::start(
        &first.url,
        AgentOptions {
            trusted_ca: Some(ca.ca_pem()),
            more_control_planes: vec![second.url.clone()],
            ..Default::default()
        },
    )
    .await?;
    let receiver = Receiver::start(&ca).await?;
    let old = first
        .admin()
        .await?
        .create_subscription(pb::CreateSubscriptionRequest {
            subscription: Some(subscription("shop-1", &receiver.url("/old"), &["order.*"])),
            allow_unregistered: false,
        })
        .await?
        .into_inner();
    // The surviving replica will see the agent on the first one (presence in etcd).
    second.wait_listed("replica-a", old.revision).await?;

    // SIGKILL: no goodbye to the agent, no lease revoked.
    first.child.start_kill()?;
    first.child.wait().await?;
    let mut admin = second.admin().await?;
    admin
        .delete_subscription(pb::DeleteSubscriptionRequest {
            id: old.id.clone(),
            expected_revision: 0,
        })
        .await?;
    let new = admin
        .create_subscription(pb::CreateSubscriptionRequest {
            subscription: Some(subscription("shop-1", &receiver.url("/new"), &["order.*"])),
            allow_unregistered: false,
        })
        .await?
        .into_inner();
    second.wait_listed("replica-b", new.revision).await?;

    let emitted = agent
        .emit(event(
            "shop-1",
            "order.created",
            &serde_json::json!({"n": 1}),
        ))
        .await?;
    assert_eq!(emitted.matched, 1, "only the new subscription");
    let requests = receiver.wait_for_requests(1, WAIT).await?;
    assert_eq!(requests[0].path, "/new");
    Ok(())
}
