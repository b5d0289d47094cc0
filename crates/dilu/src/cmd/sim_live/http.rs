//! The blocking HTTP call both runs poll with: the trainer's `/status`, the platform's instances and events.

use reqwest::blocking::Client;
use serde_json::Value;

/// `GET url`, a non-success status an error, the body parsed as JSON.
pub(super) fn get_json(client: &Client, url: &str) -> reqwest::Result<Value> {
    client
        .get(url)
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.json())
}
