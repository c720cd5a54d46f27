//! Fetching images on a caller's behalf: a real image becomes a data URL; a non-image, an
//! oversize body and an unreachable host are `bad_request` errors naming the URL.
#![cfg(feature = "server")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use _llmux::providers::media::{inline_remote_images, parse_data_url};
use _llmux::testing::fake_upstream::{spawn, PIXEL_PNG};
use _llmux::ErrorKind;
use base64::Engine;
use serde_json::json;

#[tokio::test]
async fn fetches_converts_and_refuses() {
    let f = spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = format!("http://{}", f.addr);
    let mut msgs = vec![json!({"role": "user", "content": [
        {"type": "text", "text": "describe"},
        {"type": "image_url", "image_url": {"url": format!("{base}/__files/pixel.png")}},
        {"type": "image_url", "image_url": "data:image/jpeg;base64,/9j/AA=="}
    ]})];
    inline_remote_images(&mut msgs).await.unwrap();
    let url = msgs[0]["content"][1]["image_url"]["url"].as_str().unwrap();
    let (mime, data) = parse_data_url(url).unwrap();
    assert_eq!(mime, "image/png");
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap(),
        PIXEL_PNG
    );
    assert_eq!(
        msgs[0]["content"][2]["image_url"], "data:image/jpeg;base64,/9j/AA==",
        "data URLs are left alone"
    );

    for (path, why) in [
        ("/__files/page.html", "not an image"),
        ("/__files/big.png", "larger than"),
        ("/__files/none.png", "HTTP 404"),
    ] {
        let mut msgs = vec![json!({"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": format!("{base}{path}")}}
        ]})];
        let e = inline_remote_images(&mut msgs).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest, "{path}");
        assert!(
            e.message.contains(path) && e.message.contains(why),
            "{path}: {}",
            e.message
        );
    }
}
