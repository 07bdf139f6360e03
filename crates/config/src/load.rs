//! The file as written: what serde reads, before anything is checked.
//! The `[pgherd]` section's shape comes from the settings table.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::kinds::{AuthType, PoolMode, Target};
use crate::settings::RawGeneral;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    #[serde(default)]
    pub pgherd: RawGeneral,
    #[serde(default)]
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub nodes: Vec<Node>,
    #[serde(default)]
    pub databases: BTreeMap<String, Database>,
    #[serde(default)]
    pub users: BTreeMap<String, User>,
    #[serde(default)]
    pub notify: Notify,
    #[serde(default)]
    pub peers: BTreeMap<String, Peer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Peer {
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Notify {
    pub webhook_urls: Vec<String>,
    pub exec: Vec<String>,
    pub telegram_bot_token: String,
    pub telegram_chat_id: String,
    pub telegram_api_url: String,
    pub events: Vec<String>,
    pub instance: String,
    pub ca_file: String,
    pub timeout: f64,
    pub pool_saturated_after: f64,
    pub login_failure_burst: u64,
}

impl Default for Notify {
    fn default() -> Self {
        Notify {
            webhook_urls: Vec::new(),
            exec: Vec::new(),
            telegram_bot_token: String::new(),
            telegram_chat_id: String::new(),
            telegram_api_url: "https://api.telegram.org".into(),
            events: Vec::new(),
            instance: String::new(),
            ca_file: crate::SYSTEM_CA_BUNDLE.into(),
            timeout: 10.0,
            pool_saturated_after: 10.0,
            login_failure_burst: 20,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Listener {
    pub addr: String,
    pub target: Target,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Node {
    pub name: String,
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default = "default_priority")]
    pub priority: u32,
}

fn default_weight() -> u32 {
    crate::Node::DEFAULT_WEIGHT
}

fn default_priority() -> u32 {
    crate::Node::DEFAULT_PRIORITY
}

fn default_port() -> u16 {
    5432
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct Database {
    pub dbname: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub pool_size: Option<usize>,
    pub min_pool_size: Option<usize>,
    pub reserve_pool: Option<usize>,
    pub max_db_connections: Option<usize>,
    pub pool_mode: Option<PoolMode>,
    pub target: Option<Target>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct User {
    pub password: Option<String>,
    pub server_password: Option<String>,
    pub pool_mode: Option<PoolMode>,
    pub max_user_connections: Option<usize>,
    pub auth_type: Option<AuthType>,
}
