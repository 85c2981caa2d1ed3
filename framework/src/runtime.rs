//! State shared by all controllers of one running operator.

use crate::context::{EventType, kube_event};
use crate::data::DataMap;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::operator::OperatorConfig;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use std::sync::Arc;
use tokio::sync::Semaphore;

pub(crate) struct Runtime {
    pub(crate) client: Client,
    pub(crate) prefix: String,
    pub(crate) field_manager: String,
    pub(crate) config: OperatorConfig,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) recorder: Recorder,
    pub(crate) slots: Arc<Semaphore>,
    /// User data registered with `Operator::data`.
    pub(crate) data: Arc<DataMap>,
}

impl Runtime {
    pub(crate) fn new(
        client: Client,
        prefix: String,
        config: OperatorConfig,
        metrics: Arc<Metrics>,
        identity: Option<String>,
        data: Arc<DataMap>,
    ) -> Runtime {
        let field_manager = config
            .field_manager
            .clone()
            .unwrap_or_else(|| prefix.clone());
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: field_manager.clone(),
                instance: identity,
            },
        );
        let slots = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
        Runtime {
            client,
            prefix,
            field_manager,
            config,
            metrics,
            recorder,
            slots,
            data,
        }
    }

    pub(crate) fn finalizer(&self) -> String {
        format!("{}/finalizer", self.prefix)
    }

    pub(crate) async fn publish_event(
        &self,
        type_: EventType,
        reason: &str,
        note: &str,
        action: &str,
        reference: &ObjectReference,
    ) -> Result<(), Error> {
        self.metrics.api_request("event");
        let ev = kube_event(type_, reason, note, action);
        self.recorder.publish(&ev, reference).await?;
        Ok(())
    }
}
