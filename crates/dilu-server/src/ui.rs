//! The live dashboard at `GET /ui`: one HTML page, one script, one stylesheet and an icon, hand-written and embedded in
//! the binary (`assets/ui/`). The page reads only `GET` endpoints (no token): `/v1/functions`, `/v1/devices`,
//! `/metrics` and the event stream `/v1/events/stream`; it loads nothing from anywhere else, and its
//! `Content-Security-Policy` says so.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The page.
pub const INDEX_HTML: &str = include_str!("../assets/ui/index.html");
/// Its script.
pub const APP_JS: &str = include_str!("../assets/ui/app.js");
/// Its stylesheet.
pub const APP_CSS: &str = include_str!("../assets/ui/app.css");
/// Its icon (so the browser's own request for one is answered).
pub const FAVICON_SVG: &str = include_str!("../assets/ui/favicon.svg");

/// Same origin only: no inline script or style, no frames, no forms; data is fetched from this server alone.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

async fn icon() -> Response {
    asset("image/svg+xml", FAVICON_SVG)
}

/// `GET /ui` (and `/ui/`), `/ui/app.js`, `/ui/app.css`, `/ui/favicon.svg`; state-free, merged into the API's router.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/app.js", get(script))
        .route("/ui/app.css", get(style))
        .route("/ui/favicon.svg", get(icon))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_assets() {
        assert!(INDEX_HTML.contains(r#"src="/ui/app.js""#));
        assert!(INDEX_HTML.contains(r#"href="/ui/app.css""#));
        for text in [INDEX_HTML, APP_JS, APP_CSS] {
            // The only URL is SVG's namespace name, which is never fetched.
            let text = text.replace("http://www.w3.org/2000/svg", "");
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
        assert!(!INDEX_HTML.contains("<script>") && !INDEX_HTML.contains("style="));
    }
}
