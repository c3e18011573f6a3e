//! Metric labels both daemons share, so the agent's and the control plane's
//! `herald_delivery_attempts_total{outcome}` series carry the same bounded set of values.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::v1 as pb;

/// An attempt's outcome, as a label value.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum OutcomeValue {
    /// The receiver answered 2xx.
    delivered,
    /// Failed; another attempt is scheduled.
    retrying,
    /// Failed for good (last attempt, 410, or refused).
    failed,
    /// Not sent: parked while the subscription was disabled and skipped on enable.
    skipped,
}

/// The `{outcome}` label set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// The attempt's outcome.
    pub outcome: OutcomeValue,
}

impl OutcomeLabel {
    /// Every outcome.
    pub const ALL: [OutcomeValue; 4] = [
        OutcomeValue::delivered,
        OutcomeValue::retrying,
        OutcomeValue::failed,
        OutcomeValue::skipped,
    ];

    /// Puts every outcome's series in `family` at 0, so a rate or an alert on one has a
    /// series from the start rather than from its first count.
    pub fn start_each(family: &Family<OutcomeLabel, Counter>) {
        for outcome in Self::ALL {
            let _ = family.get_or_create(&OutcomeLabel { outcome });
        }
    }
}

impl From<pb::Outcome> for OutcomeLabel {
    fn from(outcome: pb::Outcome) -> Self {
        let outcome = match outcome {
            pb::Outcome::Delivered => OutcomeValue::delivered,
            pb::Outcome::Retrying => OutcomeValue::retrying,
            pb::Outcome::Skipped => OutcomeValue::skipped,
            pb::Outcome::Failed | pb::Outcome::Unspecified => OutcomeValue::failed,
        };
        OutcomeLabel { outcome }
    }
}
