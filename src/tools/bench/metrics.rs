//! The API server's own request counters (`apiserver_request_total` on `/metrics`), so that
//! write and conflict counts come from the server, not from the controller's account of itself.

use std::collections::BTreeMap;

use kube::Client;
use serde::{Deserialize, Serialize};

use super::{BenchError, Doing};

const COUNTER: &str = "apiserver_request_total";

/// One series of the counter, summed over the labels we do not split by.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RequestKey {
    pub resource: String,
    pub subresource: String,
    pub verb: String,
    pub code: String,
}

#[derive(Clone, Debug, Default)]
pub struct RequestCounts(BTreeMap<RequestKey, f64>);

/// What the API server counted for one phase.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ApiCounts {
    /// PATCH workspaces/status by HTTP code.
    pub status_patches: BTreeMap<String, u64>,
    /// Every PATCH workspaces/status, whatever its answer.
    pub status_writes: u64,
    /// Those answered 409 Conflict (a stale resourceVersion).
    pub conflicts: u64,
    /// Every request counted, as "VERB resource[/subresource] code" → count.
    pub requests: BTreeMap<String, u64>,
}

pub async fn scrape(client: &Client) -> Result<RequestCounts, BenchError> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .map_err(|e| BenchError::Request { what: "/metrics", detail: e.to_string() })?;
    let text = client.request_text(request).await.doing(|| "read the API server's /metrics".into())?;
    Ok(parse(&text))
}

/// Parses the Prometheus text format, keeping only `apiserver_request_total`.
pub fn parse(text: &str) -> RequestCounts {
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(COUNTER).and_then(|r| r.strip_prefix('{')) else { continue };
        let Some((labels, value)) = rest.rsplit_once('}') else { continue };
        let Ok(value) = value.trim().parse::<f64>() else { continue };
        let labels = parse_labels(labels);
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        let key = RequestKey {
            resource: get("resource"),
            subresource: get("subresource"),
            verb: get("verb"),
            code: get("code"),
        };
        *counts.entry(key).or_insert(0.0) += value;
    }
    RequestCounts(counts)
}

/// `a="x",b="y\"z"` → {a: x, b: y"z}.
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    labels
}

impl RequestCounts {
    /// The increase since `before` (series that did not move are left out).
    pub fn since(&self, before: &RequestCounts) -> RequestCounts {
        RequestCounts(increase(&self.0, &before.0))
    }

    pub fn api_counts(&self) -> ApiCounts {
        let mut api = ApiCounts::default();
        for (k, &v) in &self.0 {
            let v = v.round() as u64;
            let sub = if k.subresource.is_empty() { String::new() } else { format!("/{}", k.subresource) };
            *api.requests.entry(format!("{} {}{sub} {}", k.verb, k.resource, k.code)).or_insert(0) += v;
            if k.resource == "workspaces" && k.subresource == "status" && k.verb == "PATCH" {
                *api.status_patches.entry(k.code.clone()).or_insert(0) += v;
                api.status_writes += v;
                if k.code == "409" {
                    api.conflicts += v;
                }
            }
        }
        api
    }
}

/// The increase of each series from `before` to `after` (series that did not move are left out).
pub fn increase<K: Ord + Clone>(after: &BTreeMap<K, f64>, before: &BTreeMap<K, f64>) -> BTreeMap<K, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d > 0.0)
        .collect()
}

/// The counter and histogram `_sum`/`_count` series of a Prometheus or OpenMetrics page, keyed
/// by the series as written (`name{labels}`): the controller's own account, for comparison.
pub fn series(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            let wanted = ["_total", "_sum", "_count"].iter().any(|s| name.ends_with(s));
            Some((series.to_string(), value.parse::<f64>().ok()?)).filter(|_| wanted)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"# HELP apiserver_request_total [STABLE] Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",component="apiserver",dry_run="",group="switchyard.dev",resource="workspaces",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} 30
apiserver_request_total{code="409",component="apiserver",dry_run="",group="switchyard.dev",resource="workspaces",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} 2
apiserver_request_total{code="201",component="apiserver",dry_run="",group="switchyard.dev",resource="workspaces",scope="resource",subresource="",verb="POST",version="v1alpha1"} 1e+01
apiserver_request_total_other{code="200"} 99
"#;

    #[test]
    fn counts_status_writes_and_conflicts_by_code() {
        let before = parse(
            "apiserver_request_total{code=\"200\",resource=\"workspaces\",subresource=\"status\",verb=\"PATCH\"} 10\n",
        );
        let api = parse(SAMPLE).since(&before).api_counts();
        assert_eq!(api.status_writes, 22);
        assert_eq!(api.conflicts, 2);
        assert_eq!(api.status_patches.get("200"), Some(&20));
        assert_eq!(api.requests.get("POST workspaces 201"), Some(&10));
        assert_eq!(api.requests.len(), 3);
    }

    #[test]
    fn controller_series_keeps_counters_and_histogram_totals() {
        let page = "# TYPE reconciles counter\nreconciles_total 12\nops_in_flight 3\n\
                    call_seconds_sum{op=\"stop\"} 1.5\ncall_seconds_count{op=\"stop\"} 6\ncall_seconds_bucket{le=\"1\"} 6\n# EOF\n";
        let s = series(page);
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(s.get("call_seconds_sum{op=\"stop\"}"), Some(&1.5));
        let before = series("reconciles_total 2\n");
        assert_eq!(increase(&s, &before).get("reconciles_total"), Some(&10.0));
    }

    #[test]
    fn labels_with_escapes_and_commas() {
        let labels = parse_labels(r#"a="x,y",b="q\"uote",c="""#);
        assert_eq!(labels.get("a").map(String::as_str), Some("x,y"));
        assert_eq!(labels.get("b").map(String::as_str), Some("q\"uote"));
        assert_eq!(labels.get("c").map(String::as_str), Some(""));
    }
}
