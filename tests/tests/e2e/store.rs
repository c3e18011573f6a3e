//! The config store contract, checked against both implementations.

use herald_control_plane::store::{Store, conformance};
use herald_tests::Etcd;

#[tokio::test]
async fn etcd_keeps_the_store_contract() -> anyhow::Result<()> {
    let etcd = Etcd::start().await?;
    let store = Store::etcd(&[etcd.endpoint()]).await?;
    conformance::check_all(&store, "/conformance").await;
    Ok(())
}

#[tokio::test]
async fn the_embedded_store_keeps_the_store_contract() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::embedded(dir.path()).await?;
    conformance::check_all(&store, "/conformance").await;
    Ok(())
}
