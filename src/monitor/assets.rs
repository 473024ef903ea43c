//! The page's files, compiled into the extension (nothing is fetched at run time).

/// `(content type, bytes)` of the asset `name`, if it exists.
pub fn get(name: &str) -> Option<(&'static str, &'static [u8])> {
    Some(match name {
        "index.html" => (
            "text/html; charset=utf-8",
            include_bytes!("assets/index.html"),
        ),
        "app.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!("assets/app.js"),
        ),
        "charts.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!("assets/charts.js"),
        ),
        "style.css" => (
            "text/css; charset=utf-8",
            include_bytes!("assets/style.css"),
        ),
        "favicon.svg" => ("image/svg+xml", include_bytes!("assets/favicon.svg")),
        _ => return None,
    })
}
