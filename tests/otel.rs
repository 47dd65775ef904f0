//! OpenTelemetry traces (feature `otel`): a switch between two provider-sim processes, run by a
//! real `switchyard controller` process, arrives at an OTLP/HTTP receiver as one trace per
//! reconcile: reconcile → step → provider call → the provider's own request span (its parent
//! comes from the `traceparent` header), and the kube client's request spans under the steps.
#![cfg(feature = "otel")]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use kube::api::{Api, PostParams};
use serde_json::Value;
use support::fixtures::*;
use support::sims::Sim;
use support::*;
use switchyard::api::Workspace;

/// One exported span, flattened out of the OTLP JSON envelope.
#[derive(Clone, Debug)]
struct Span {
    service: String,
    trace: String,
    id: String,
    parent: String,
    name: String,
    attributes: HashMap<String, String>,
}

/// An OTLP/HTTP receiver (JSON encoding) that keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Collector {
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().route("/v1/traces", post(receive)).with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

async fn receive(State(collector): State<Collector>, body: String) -> &'static str {
    let request: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not OTLP JSON ({e}): {body}"));
    let mut received = Vec::new();
    for resource_spans in array(&request["resourceSpans"]) {
        let service = attributes(&resource_spans["resource"]["attributes"]).remove("service.name").unwrap_or_default();
        for scope in array(&resource_spans["scopeSpans"]) {
            for span in array(&scope["spans"]) {
                received.push(Span {
                    service: service.clone(),
                    trace: text(&span["traceId"]),
                    id: text(&span["spanId"]),
                    parent: text(&span["parentSpanId"]),
                    name: text(&span["name"]),
                    attributes: attributes(&span["attributes"]),
                });
            }
        }
    }
    collector.spans.lock().expect("collector lock").extend(received);
    "{}"
}

fn array(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

/// OTLP key/value attributes as strings (`{"key": k, "value": {"stringValue": v}}`, or int, bool…).
fn attributes(v: &Value) -> HashMap<String, String> {
    array(v)
        .iter()
        .map(|kv| {
            let value = kv["value"].as_object().and_then(|o| o.values().next()).cloned().unwrap_or(Value::Null);
            let value = value.as_str().map(str::to_owned).unwrap_or_else(|| value.to_string());
            (text(&kv["key"]), value)
        })
        .collect()
}

fn otel_env(endpoint: &str, service: &str) -> Vec<(String, String)> {
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_SERVICE_NAME", service),
        // Export within ~100ms of a span ending, so the test waits briefly.
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The chain of a span up to its root, by parent id, within its trace.
fn ancestors<'a>(spans: &'a [Span], span: &'a Span) -> Vec<&'a Span> {
    let mut chain = vec![span];
    while let Some(parent) =
        chain.last().and_then(|s| spans.iter().find(|p| p.trace == s.trace && p.id == s.parent && !s.parent.is_empty()))
    {
        chain.push(parent);
    }
    chain
}

/// Names of `span`'s ancestors, nearest first.
fn lineage(spans: &[Span], span: &Span) -> Vec<String> {
    ancestors(spans, span).iter().skip(1).map(|s| s.name.clone()).collect()
}

#[tokio::test]
async fn a_switch_is_one_trace_from_reconcile_to_the_providers() {
    let client = client().await;
    let ns = namespace(&client, "otel").await;
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let (a, b) = (unique("a"), unique("b"));
    let _sim_a = Sim::provider_with_env(&client, &ns, &a, otel_env(&endpoint, "provider-a")).await;
    let _sim_b = Sim::provider_with_env(&client, &ns, &b, otel_env(&endpoint, "provider-b")).await;
    let mut controller = controller_process("otel-x", &ns, &[], &otel_env(&endpoint, "switchyard-controller"));

    let api: Api<Workspace> = Api::namespaced(client.clone(), &ns);
    api.create(&PostParams::default(), &workspace("ws", &a)).await.expect("create");
    wait_ready_on(&api, "ws", &a, Duration::from_secs(30)).await;
    switch_with_kubectl(&ns, "ws", &b);
    wait_ready_on(&api, "ws", &b, Duration::from_secs(30)).await;

    // The provider's span for each call of the switch, and the controller's spans above it.
    let provider_span = |spans: &[Span], service: &str, route: &str| {
        spans
            .iter()
            .find(|s| s.service == service && s.attributes.get("http.route").is_some_and(|r| r == route))
            .cloned()
    };
    let spans = eventually("the switch's spans from both providers", Duration::from_secs(30), || {
        let spans = collector.spans();
        async move {
            let complete = provider_span(&spans, "provider-a", "/v1/instances/{id}/stop")
                .zip(provider_span(&spans, "provider-b", "/v1/instances"))
                .is_some_and(|(stop, create)| {
                    ancestors(&spans, &stop).len() >= 4 && ancestors(&spans, &create).len() >= 4
                });
            complete.then_some(spans)
        }
    })
    .await;

    let stop = provider_span(&spans, "provider-a", "/v1/instances/{id}/stop").expect("stop span");
    assert_eq!(
        lineage(&spans, &stop),
        [format!("stop {a}"), "stop_old".into(), "reconcile".into()],
        "the stop on provider-a, under the controller's step"
    );
    let call = ancestors(&spans, &stop)[1];
    assert_eq!(call.service, "switchyard-controller");
    assert_eq!(call.attributes.get("provider"), Some(&a));
    assert_eq!(call.attributes.get("operation").map(String::as_str), Some("stop"));
    assert_eq!(call.attributes.get("result").map(String::as_str), Some("ok"));
    assert_eq!(stop.attributes.get("http.response.status_code").map(String::as_str), Some("200"));
    assert_eq!(stop.name, "POST /v1/instances/{id}/stop");

    let create = provider_span(&spans, "provider-b", "/v1/instances").expect("create span");
    assert_eq!(lineage(&spans, &create), [format!("provision {b}"), "provision".into(), "reconcile".into()]);
    assert_eq!(ancestors(&spans, &create)[1].attributes.get("provider"), Some(&b));

    // The claim is a guarded status PATCH: the kube client's request span (named by its verb)
    // sits under the step.
    let claim_patch = spans.iter().find(|s| {
        s.name == "patch_status"
            && s.attributes.get("http.method").is_some_and(|m| m == "PATCH")
            && lineage(&spans, s).first().is_some_and(|p| p == "claim")
    });
    let names: Vec<String> =
        spans.iter().map(|s| format!("{} {}/{} <- {}", s.service, s.name, s.id, s.parent)).collect();
    assert!(claim_patch.is_some(), "no PATCH span under the claim step in {names:#?}");

    controller.start_kill().expect("stop the controller");
    let _ = controller.wait().await;
}
