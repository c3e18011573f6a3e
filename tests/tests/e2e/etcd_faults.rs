//! etcd is not a single point of failure: on a 3-member cluster, losing one member changes
//! nothing; losing two stops admin writes with a clear `UNAVAILABLE` while agents keep
//! delivering on the config they hold; bringing the members back converges without anyone
//! touching Herald.

use std::time::Duration;

use herald_control_plane::store_health::{CONFIG_STORE_SERVICE, LOG_SERVICE};
use herald_proto::v1 as pb;
use herald_tests::herald::serving_status;
use herald_tests::{
    AgentAndReceiver, AgentOptions, ConfigStore, ControlPlane, EtcdCluster, event, eventually,
    subscription,
};
use serde_json::json;
use tonic_health::pb::health_check_response::ServingStatus;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_three_member_cluster_rides_out_member_failures() -> anyhow::Result<()> {
    let mut etcd = EtcdCluster::start(3).await?;
    let control_plane = ControlPlane::start(ConfigStore::Etcd(etcd.endpoints())).await?;
    let AgentAndReceiver {
        agent, receiver, ..
    } = AgentAndReceiver::start(control_plane.url(), AgentOptions::default()).await?;
    let orders = control_plane
        .create(subscription(
            "shop-1",
            &receiver.url("/orders"),
            &["order.*"],
        ))
        .await?;
    control_plane.wait_applied(orders.revision, WAIT).await?;

    // One member down (whichever was leader or not): writes and deliveries go on.
    etcd.stop(0);
    let invoices = control_plane
        .create(subscription(
            "shop-1",
            &receiver.url("/invoices"),
            &["invoice.*"],
        ))
        .await?;
    control_plane.wait_applied(invoices.revision, WAIT).await?;
    agent
        .emit(event("shop-1", "order.created", &json!({"n": 1})))
        .await?;
    agent
        .emit(event("shop-1", "invoice.created", &json!({"n": 2})))
        .await?;
    receiver.wait_for_requests(2, WAIT).await?;

    // Two down: no quorum. Admin writes fail with UNAVAILABLE and say why…
    etcd.stop(1);
    let mut admin = control_plane.subscriptions().await?;
    let started = tokio::time::Instant::now();
    let refused = admin
        .create_subscription(pb::CreateSubscriptionRequest {
            subscription: Some(subscription(
                "shop-1",
                &receiver.url("/stock"),
                &["product.stock_changed"],
            )),
            allow_unregistered: false,
            ..Default::default()
        })
        .await
        .expect_err("no quorum, no write");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("config store unavailable")
            && refused.message().contains("quorum"),
        "{}",
        refused.message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the refusal took {:?}",
        started.elapsed()
    );
    // …while the agent delivers on the config it holds.
    agent
        .emit(event("shop-1", "order.created", &json!({"n": 3})))
        .await?;
    receiver.wait_for_requests(3, WAIT).await?;
    // Health checks say so: the config store and the services that need it are NOT_SERVING,
    // the delivery log is not.
    let status_of = |service: &'static str| {
        let url = control_plane.url().to_owned();
        async move { serving_status(&url, service).await }
    };
    eventually(WAIT, "the config store NOT_SERVING", || async {
        Ok((status_of(CONFIG_STORE_SERVICE).await? == ServingStatus::NotServing).then_some(()))
    })
    .await?;
    assert_eq!(
        status_of("herald.v1.Subscriptions").await?,
        ServingStatus::NotServing
    );
    assert_eq!(status_of(LOG_SERVICE).await?, ServingStatus::Serving);

    // Both members back: the same control plane and agent carry on, no restart needed.
    etcd.restart_all(&[0, 1]).await?;
    let stock = eventually(WAIT, "admin writes to succeed again", || {
        let mut admin = admin.clone();
        let receiver = &receiver;
        async move {
            Ok(admin
                .create_subscription(pb::CreateSubscriptionRequest {
                    subscription: Some(subscription(
                        "shop-1",
                        &receiver.url("/stock"),
                        &["product.*"],
                    )),
                    allow_unregistered: false,
                    ..Default::default()
                })
                .await
                .ok()
                .map(|r| r.into_inner()))
        }
    })
    .await?;
    control_plane.wait_applied(stock.revision, WAIT).await?;
    eventually(WAIT, "the config store SERVING again", || async {
        Ok((status_of(CONFIG_STORE_SERVICE).await? == ServingStatus::Serving).then_some(()))
    })
    .await?;
    agent
        .emit(event("shop-1", "product.stock_changed", &json!({"n": 4})))
        .await?;
    let requests = receiver.wait_for_requests(4, WAIT).await?;
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/orders", "/invoices", "/orders", "/stock"]);
    Ok(())
}

/// An etcd past its space quota (alarm NOSPACE) refuses writes; Herald answers a change with
/// RESOURCE_EXHAUSTED that says what to do, not with an "unreachable" UNAVAILABLE, and reads
/// keep working.
#[tokio::test]
async fn an_etcd_past_its_space_quota_refuses_changes_as_resource_exhausted() -> anyhow::Result<()>
{
    let etcd = herald_tests::Etcd::start_with_quota(256 * 1024).await?;
    let control_plane = ControlPlane::start(ConfigStore::Etcd(vec![etcd.endpoint()])).await?;
    let (status, tried) = control_plane
        .create_until_refused(
            "shop-1",
            |n| format!("https://127.0.0.1:9/{n}/{}", "p".repeat(1500)),
            Duration::from_secs(120),
        )
        .await?;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("NOSPACE"), "{}", status.message());
    assert!(tried > 1, "the first change was refused: {status:?}");
    let listed = control_plane
        .subscriptions()
        .await?
        .list_subscriptions(pb::ListSubscriptionsRequest::default())
        .await?
        .into_inner();
    assert!(!listed.subscriptions.is_empty());
    Ok(())
}

/// A subscription record damaged in etcd (an operator's `etcdctl put` of something else) is
/// named with the way out, keeps agents from a config that would lack it (they deliver on the
/// one they hold), shows in the metrics, and an operator deletes it through the API.
#[tokio::test]
async fn a_damaged_subscription_record_is_named_counted_and_deleted() -> anyhow::Result<()> {
    let etcd = herald_tests::Etcd::start().await?;
    let metrics = herald_tests::HeldPort::new()?;
    let mut control_plane =
        ControlPlane::start_configured(ConfigStore::Etcd(vec![etcd.endpoint()]), |config| {
            config.metrics_listen = Some(metrics.addr())
        })
        .await?;
    let AgentAndReceiver {
        agent, receiver, ..
    } = AgentAndReceiver::start(control_plane.url(), AgentOptions::default()).await?;
    let kept = control_plane
        .create(subscription("shop-1", &receiver.url("/kept"), &["order.*"]))
        .await?;
    let damaged = control_plane
        .create(subscription(
            "shop-1",
            &receiver.url("/damaged"),
            &["invoice.*"],
        ))
        .await?;
    control_plane.wait_applied(damaged.revision, WAIT).await?;

    let raw = herald_control_plane::store::Store::etcd(&[etcd.endpoint()]).await?;
    raw.txn(herald_control_plane::store::Txn::default().then(
        herald_control_plane::store::Op::Put(
            format!("/herald/v1/subscriptions/shop-1/{}", damaged.id),
            b"not a subscription {{{".to_vec(),
        ),
    ))
    .await?;
    // A replica restarted meanwhile starts: the damaged record does not hold up the others.
    control_plane.pause().await?;
    control_plane.resume().await?;

    // Reads name the record and the way out, as damaged data.
    let mut admin = control_plane.subscriptions().await?;
    let refused = eventually(WAIT, "the damaged record to be read", || {
        let mut admin = admin.clone();
        async move {
            // (UNAVAILABLE while the replica restarts.)
            Ok(admin
                .list_subscriptions(pb::ListSubscriptionsRequest::default())
                .await
                .err()
                .filter(|status| status.code() != tonic::Code::Unavailable))
        }
    })
    .await?;
    assert_eq!(refused.code(), tonic::Code::DataLoss, "{refused:?}");
    assert!(
        refused
            .message()
            .contains(&format!("herald subscription delete {}", damaged.id)),
        "{}",
        refused.message()
    );
    eventually(WAIT, "the damaged record to be counted", || async {
        let samples = crate::metrics::scrape(metrics.addr()).await?;
        let damaged = crate::metrics::value(
            &samples,
            "herald_config_unopened_subscriptions{reason=damaged}",
        );
        Ok((damaged == 1.0).then_some(()))
    })
    .await?;

    // The agent delivers on the config it holds.
    agent
        .emit(event("shop-1", "order.created", &json!({"n": 1})))
        .await?;
    receiver.wait_for_requests(1, WAIT).await?;

    // Deleted through the API without being opened; config flows again.
    admin
        .delete_subscription(pb::DeleteSubscriptionRequest {
            id: damaged.id.clone(),
            expected_revision: 0,
        })
        .await?;
    let later = control_plane
        .create(subscription(
            "shop-1",
            &receiver.url("/later"),
            &["invoice.*"],
        ))
        .await?;
    control_plane.wait_applied(later.revision, WAIT).await?;
    agent
        .emit(event("shop-1", "invoice.created", &json!({"n": 2})))
        .await?;
    let requests = receiver.wait_for_requests(2, WAIT).await?;
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/kept", "/later"]);
    let listed = admin
        .list_subscriptions(pb::ListSubscriptionsRequest::default())
        .await?
        .into_inner()
        .subscriptions;
    let ids: Vec<&str> = listed.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&kept.id.as_str()) && ids.contains(&later.id.as_str()));
    let samples = crate::metrics::scrape(metrics.addr()).await?;
    assert_eq!(
        crate::metrics::value(
            &samples,
            "herald_config_unopened_subscriptions{reason=damaged}"
        ),
        0.0
    );
    Ok(())
}
