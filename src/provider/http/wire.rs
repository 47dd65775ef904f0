//! The provider protocol, version 1, on the wire: paths, headers, bodies and error codes. The
//! http driver, provider-sim and the conformance suite all speak it through these types;
//! `docs/provider-protocol.yaml` is its specification.

use serde::{Deserialize, Serialize};

use crate::provider::{CallContext, InstanceInfo, InstanceState, ListedInstance};

/// The protocol version, the first path segment of every endpoint.
pub const VERSION: &str = "v1";

/// Headers that carry a lookup's call facts (a GET has no body). `switchyard-epoch` is
/// required on a lookup by key: lookups are fenced like every other per-workspace call.
/// Mutating calls carry the same facts in their body.
pub const CALLER_HEADER: &str = "switchyard-caller";
pub const OPERATION_HEADER: &str = "switchyard-operation-id";
pub const EPOCH_HEADER: &str = "switchyard-epoch";
pub const CLUSTER_HEADER: &str = "switchyard-cluster";

/// Who makes a mutating call and under which claim: the fencing facts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallFields {
    /// metadata.uid of the workspace; fences are kept per workspace.
    pub workspace_uid: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
    /// The claim's fencing epoch: refused with StaleEpoch if older than the newest seen.
    pub epoch: i64,
    /// Identity of the controller instance making the call.
    pub caller: String,
    /// The claim's operation id.
    pub operation_id: String,
    /// Identity of the cluster the call comes from; a create records it on the instance.
    #[serde(default)]
    pub cluster: String,
}

impl From<&CallContext> for CallFields {
    fn from(c: &CallContext) -> Self {
        Self {
            workspace_uid: c.workspace_uid.clone(),
            namespace: c.namespace.clone(),
            name: c.name.clone(),
            epoch: c.epoch,
            caller: c.caller.clone(),
            operation_id: c.operation_id.clone(),
            cluster: c.cluster.clone(),
        }
    }
}

impl From<CallFields> for CallContext {
    fn from(c: CallFields) -> Self {
        Self {
            namespace: c.namespace,
            name: c.name,
            workspace_uid: c.workspace_uid,
            epoch: c.epoch,
            caller: c.caller,
            operation_id: c.operation_id,
            cluster: c.cluster,
        }
    }
}

/// `POST /v1/instances`: create the instance for `key`, or return the one created under it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateInstance {
    /// Idempotency key: one key yields at most one instance, ever.
    pub key: String,
    #[serde(flatten)]
    pub call: CallFields,
    /// What to run; opaque to the protocol (the Workspace's spec.template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<serde_json::Value>,
}

/// `POST /v1/instances/{id}/stop`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StopInstance {
    #[serde(flatten)]
    pub call: CallFields,
}

/// `POST /v1/instances/{id}/stop` answer: the instance is stopped, or was never known (which
/// counts as stopped).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopped {
    pub id: String,
    /// Always `Stopped`.
    pub state: InstanceState,
}

/// `POST /v1/workspaces/{uid}/fence`: raise the workspace's fence to the call's epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RaiseFence {
    #[serde(flatten)]
    pub call: CallFields,
}

/// `POST /v1/workspaces/{uid}/fence` answer: the fence now stands at `epoch`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fence {
    pub workspace_uid: String,
    pub epoch: i64,
}

/// `GET /v1/instances?cluster=…` query: one page of the provider's inventory for a cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryQuery {
    pub cluster: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_token: Option<String>,
    /// Page size; the provider clamps it to 1..=500 (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// The default page size of an inventory list without `limit`.
pub const DEFAULT_PAGE_LIMIT: u32 = 100;

/// An inventory item: an instance and the workspace it belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryItem {
    pub id: String,
    pub key: String,
    pub workspace_uid: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
    pub state: InstanceState,
    /// The newest epoch the provider has seen for the workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<i64>,
}

/// `From` both ways between two structs that carry the same `fields`.
macro_rules! from_both_ways {
    ($a:ty, $b:ty, $($field:ident),+) => {
        impl From<$a> for $b {
            fn from(i: $a) -> Self {
                Self { $($field: i.$field),+ }
            }
        }

        impl From<$b> for $a {
            fn from(i: $b) -> Self {
                Self { $($field: i.$field),+ }
            }
        }
    };
}

from_both_ways!(ListedInstance, InventoryItem, id, key, workspace_uid, namespace, name, state, fence);

/// `GET /v1/instances?cluster=…` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryPage {
    pub items: Vec<InventoryItem>,
    /// Token of the next page (at most 1024 characters); absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// `GET /v1/instances` query: every instance of a workspace, optionally only the one of a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    pub workspace_uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// An instance as the protocol describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    pub id: String,
    pub key: String,
    pub workspace_uid: String,
    pub state: InstanceState,
}

impl Instance {
    pub fn info(&self) -> InstanceInfo {
        InstanceInfo { id: self.id.clone(), key: self.key.clone(), state: self.state }
    }
}

/// `GET /v1/instances` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceList {
    pub items: Vec<Instance>,
}

/// `GET /v1/health` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// Always "ok" in a 200 answer.
    pub status: String,
    /// The provider's name, as it ledgers calls.
    pub provider: String,
    /// Protocol versions served, e.g. ["v1"].
    pub versions: Vec<String>,
}

/// Machine-readable error codes. Clients act on `retryable`; the code says why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// 401: missing or wrong bearer token.
    Unauthorized,
    /// 400: malformed body, missing field, bad key.
    InvalidRequest,
    /// 404: no such instance (get by id) or no such endpoint.
    NotFound,
    /// 409: the call's epoch is older than the newest the provider has seen for the workspace.
    StaleEpoch,
    /// 409: the key or instance belongs to another workspace.
    Conflict,
    /// 503: the provider cannot serve the call now; nothing was done.
    Unavailable,
    /// 500: the provider failed; the call may or may not have taken effect.
    Internal,
    /// A code this client does not know: judged by `retryable` alone.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The HTTP status that goes with the code.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::Unauthorized => 401,
            ErrorCode::InvalidRequest => 400,
            ErrorCode::NotFound => 404,
            ErrorCode::StaleEpoch | ErrorCode::Conflict => 409,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal | ErrorCode::Unknown => 500,
        }
    }

    /// Whether the same call can succeed later, as the protocol defines it for the code.
    pub fn retryable(self) -> bool {
        matches!(self, ErrorCode::Unavailable | ErrorCode::Internal)
    }
}

/// The body of every non-2xx answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// Whether sending the same call again can help.
    pub retryable: bool,
    /// StaleEpoch only: the newest epoch the provider has accepted for the workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_epoch: Option<i64>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), retryable: code.retryable(), newest_epoch: None }
    }
}

/// Whether `key` is a valid idempotency key: 1–253 characters of `[A-Za-z0-9._-]`, so it is
/// safe in paths, query strings, labels and logs without escaping.
pub fn valid_key(key: &str) -> bool {
    (1..=253).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The specification and these types must not drift apart.
    #[test]
    fn the_openapi_document_matches_the_wire_types() {
        let doc: serde_json::Value =
            serde_saphyr::from_str(include_str!("../../../docs/provider-protocol.yaml")).expect("valid YAML");
        let codes: Vec<ErrorCode> =
            serde_json::from_value(doc["components"]["schemas"]["ErrorCode"]["enum"].clone()).expect("codes");
        for code in &codes {
            assert_ne!(*code, ErrorCode::Unknown, "the document names a code the wire types lack");
            let response = code.status().to_string();
            let documented = doc["paths"]
                .as_object()
                .expect("paths")
                .values()
                .any(|p| p.as_object().expect("ops").values().any(|op| op["responses"].get(&response).is_some()));
            assert!(documented, "{code:?} answers {response}, which no operation documents");
        }
        assert_eq!(codes.len(), 7);
        for path in [
            "/v1/health",
            "/v1/instances",
            "/v1/instances/{id}",
            "/v1/instances/{id}/stop",
            "/v1/workspaces/{uid}/fence",
        ] {
            assert!(doc["paths"].get(path).is_some(), "{path} is undocumented");
        }
        let instance: Vec<String> =
            serde_json::from_value(doc["components"]["schemas"]["Instance"]["required"].clone()).expect("fields");
        let wire = serde_json::to_value(Instance {
            id: "i".into(),
            key: "k".into(),
            workspace_uid: "u".into(),
            state: InstanceState::Running,
        })
        .expect("json");
        let mut fields: Vec<String> = wire.as_object().expect("object").keys().cloned().collect();
        fields.sort();
        let mut documented = instance.clone();
        documented.sort();
        assert_eq!(fields, documented);

        // Every field of these bodies is documented, and the documented required ones exist.
        let item = InventoryItem {
            id: "i".into(),
            key: "k".into(),
            workspace_uid: "u".into(),
            namespace: "ns".into(),
            name: "w".into(),
            state: InstanceState::Running,
            fence: Some(1),
        };
        let page = InventoryPage { items: vec![item.clone()], next_page_token: Some("t".into()) };
        let fence = Fence { workspace_uid: "u".into(), epoch: 1 };
        let call = CallFields {
            workspace_uid: "u".into(),
            namespace: "ns".into(),
            name: "w".into(),
            epoch: 1,
            caller: "c".into(),
            operation_id: "op".into(),
            cluster: "c1".into(),
        };
        for (schema, wire) in [
            ("InventoryItem", serde_json::to_value(&item)),
            ("InventoryPage", serde_json::to_value(&page)),
            ("Fence", serde_json::to_value(&fence)),
            ("CallFields", serde_json::to_value(&call)),
        ] {
            let wire = wire.expect("json");
            let object = wire.as_object().expect("object");
            let schema = &doc["components"]["schemas"][schema];
            let properties = schema["properties"].as_object().unwrap_or_else(|| panic!("{schema:?} has properties"));
            for field in object.keys() {
                assert!(properties.contains_key(field.as_str()), "{field} is undocumented in {schema:?}");
            }
            let required: Vec<String> = serde_json::from_value(schema["required"].clone()).unwrap_or_default();
            for field in required {
                assert!(object.contains_key(&field), "documented {field} is not on the wire");
            }
        }
        let list_params: Vec<String> = doc["paths"]["/v1/instances"]["get"]["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .filter_map(|p| p["name"].as_str().map(str::to_owned))
            .collect();
        for name in ["workspaceUid", "key", "cluster", "pageToken", "limit", EPOCH_HEADER] {
            assert!(
                list_params.iter().any(|p| p.eq_ignore_ascii_case(name)),
                "GET /v1/instances: {name} is undocumented"
            );
        }
    }

    #[test]
    fn keys_are_url_safe() {
        assert!(valid_key("6a1f0c3e-2b7d.0d9c8b7a_x"));
        for bad in ["", "a/b", "a b", "ä", &"k".repeat(254)] {
            assert!(!valid_key(bad), "{bad:?}");
        }
    }

    #[test]
    fn error_codes_carry_their_retryability() {
        let body = ErrorBody::new(ErrorCode::Unavailable, "busy");
        assert_eq!(
            serde_json::to_value(&body).expect("json"),
            serde_json::json!({"code": "Unavailable", "message": "busy", "retryable": true})
        );
        let unknown: ErrorBody =
            serde_json::from_str(r#"{"code":"QuotaExceeded","message":"m","retryable":false}"#).expect("json");
        assert_eq!(unknown.code, ErrorCode::Unknown);
    }
}
