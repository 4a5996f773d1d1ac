//! The document against the router: the same paths with the same methods.

use std::collections::BTreeSet;

use super::*;

fn config(metrics_public: bool) -> crate::api::ApiConfig {
    crate::api::ApiConfig {
        token: Some("t".into()),
        metrics_public,
        artifact_store: std::path::PathBuf::from("/nonexistent"),
        body: crate::api::BodyLimits {
            max_bytes: 1 << 20,
            timeout: std::time::Duration::from_secs(1),
        },
        ui: Default::default(),
    }
}

/// `(METHOD, path)` of every route a router serves, read from its `Debug`
/// form (axum has no other way to list them): each route id's path, and
/// the methods its `Allow` header would name. `HEAD` comes with `GET`.
fn served<S>(router: &Router<S>) -> BTreeSet<(String, String)> {
    let text = format!("{router:?}");
    // The path router only: the fallback router holds the catch-all.
    let text = text.split("fallback_router:").next().unwrap_or_default();
    let (endpoints, node) = text.split_once("node: Node {").unwrap_or((text, ""));
    let mut methods = std::collections::BTreeMap::new();
    for chunk in endpoints.split("RouteId(").skip(1) {
        let Some((id, rest)) = chunk.split_once(')') else {
            continue;
        };
        let allowed = rest
            .split_once("allow_header: Bytes(b\"")
            .and_then(|(_, tail)| tail.split_once('"'))
            .map(|(list, _)| list.to_owned())
            .unwrap_or_default();
        methods.insert(id.trim().to_owned(), allowed);
    }
    let mut routes = BTreeSet::new();
    for chunk in node.split("RouteId(").skip(1) {
        let Some((id, rest)) = chunk.split_once(')') else {
            continue;
        };
        let Some(path) = rest.split('"').nth(1) else {
            continue;
        };
        for method in methods
            .get(id.trim())
            .into_iter()
            .flat_map(|m| m.split(','))
        {
            if !method.is_empty() && method != "HEAD" {
                routes.insert((method.to_owned(), path.to_owned()));
            }
        }
    }
    routes
}

/// `(METHOD, path)` of every operation the document describes.
fn documented() -> BTreeSet<(String, String)> {
    let document: serde_json::Value =
        serde_json::from_str(&document()).expect("the document is JSON");
    let mut operations = BTreeSet::new();
    let paths = document["paths"].as_object().expect("paths");
    for (path, item) in paths {
        for method in item.as_object().expect("a path item").keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                operations.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    operations
}

/// What differs, in words, or nothing.
fn differences(
    served: &BTreeSet<(String, String)>,
    documented: &BTreeSet<(String, String)>,
) -> Vec<String> {
    let undocumented = served
        .difference(documented)
        .map(|(m, p)| format!("{m} {p} is served but not in /openapi.json"));
    let unserved = documented
        .difference(served)
        .map(|(m, p)| format!("{m} {p} is in /openapi.json but not served"));
    undocumented.chain(unserved).collect()
}

#[test]
fn the_document_describes_every_route_and_only_those() {
    for metrics_public in [false, true] {
        let served = served(&crate::api::routes(config(metrics_public)));
        // The reading of the router works: a few routes we know are there.
        for known in [
            ("GET", "/healthz"),
            ("POST", "/v1/batches"),
            ("GET", "/v1/batches"),
        ] {
            let known = (known.0.to_owned(), known.1.to_owned());
            assert!(
                served.contains(&known),
                "{known:?} not read from the router: {served:?}"
            );
        }
        let differences = differences(&served, &documented());
        assert!(differences.is_empty(), "{}", differences.join("\n"));
    }
}

#[test]
fn a_route_added_without_an_entry_fails_the_check() {
    async fn extra() -> &'static str {
        "x"
    }
    let router = crate::api::routes(config(false))
        .route("/v1/extra", get(extra))
        .route("/v1/batches/{id}/units", axum::routing::delete(extra));
    let differences = differences(&served(&router), &documented());
    assert_eq!(
        differences,
        [
            "DELETE /v1/batches/{id}/units is served but not in /openapi.json",
            "GET /v1/extra is served but not in /openapi.json",
        ]
    );
}

#[test]
fn data_routes_want_the_bearer_token_and_open_ones_do_not() {
    let document: serde_json::Value = serde_json::from_str(&document()).expect("JSON");
    let scheme = &document["components"]["securitySchemes"]["bearer"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    assert_eq!(document["security"], serde_json::json!([{"bearer": []}]));
    let open = [
        "/healthz",
        "/openapi.json",
        "/ui",
        "/ui/",
        "/ui/app.js",
        "/ui/timeline.js",
        "/ui/app.css",
    ];
    for (method, path) in documented() {
        let operation = &document["paths"][&path][method.to_lowercase()];
        let overridden = operation.get("security").is_some();
        assert_eq!(overridden, open.contains(&path.as_str()), "{method} {path}");
        if !open.contains(&path.as_str()) {
            assert!(
                operation["responses"]["401"].is_object(),
                "{method} {path} documents no 401"
            );
        }
    }
}
