//! The SQLSTATEs pgherd sends or acts on, under PostgreSQL's own names
//! (`src/backend/utils/errcodes.txt`), so a reader greps one name and a
//! client sees the code it would get from a server in the same situation.

/// `00000`: a notice that is not a warning.
pub const SUCCESSFUL_COMPLETION: &str = "00000";
/// `08001`: no server connection could be opened for the client.
pub const SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION: &str = "08001";
/// `08006`: the server connection broke under the client.
pub const CONNECTION_FAILURE: &str = "08006";
/// `08P01`: a message that breaks the protocol.
pub const PROTOCOL_VIOLATION: &str = "08P01";
/// `22023`: a console command's argument is not valid.
pub const INVALID_PARAMETER_VALUE: &str = "22023";
/// `25006`: a write on a standby or in a read-only transaction.
pub const READ_ONLY_SQL_TRANSACTION: &str = "25006";
/// `25P03`: `idle_transaction_timeout` ended the session.
pub const IDLE_IN_TRANSACTION_SESSION_TIMEOUT: &str = "25P03";
/// `28000`: no rule lets this user in (hba, unknown user, method).
pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
/// `28P01`: the password is wrong.
pub const INVALID_PASSWORD: &str = "28P01";
/// `3D000`: no such database.
pub const INVALID_CATALOG_NAME: &str = "3D000";
/// `42501`: the console command needs an admin user.
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
/// `42601`: the console cannot read the command.
pub const SYNTAX_ERROR: &str = "42601";
/// `42704`: the console command names nothing pgherd knows.
pub const UNDEFINED_OBJECT: &str = "42704";
/// `53300`: a connection limit is reached.
pub const TOO_MANY_CONNECTIONS: &str = "53300";
/// A configured limit would be passed (pgherd: `max_pinned_percent`).
pub const CONFIGURATION_LIMIT_EXCEEDED: &str = "53400";
/// `57014`: the query was cancelled (`query_timeout`, `query_wait_timeout`).
pub const QUERY_CANCELED: &str = "57014";
/// `57P01`: an administrator or a shutdown ended the session.
pub const ADMIN_SHUTDOWN: &str = "57P01";
/// `57P03`: no server can take the client now (no primary, no standby).
pub const CANNOT_CONNECT_NOW: &str = "57P03";
/// `57P05`: the server's `idle_session_timeout` ended the session.
pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
/// `F0000`: RELOAD found the configuration file unusable.
pub const CONFIG_FILE_ERROR: &str = "F0000";
/// `XX000`: pgherd broke one of its own rules (a bug, never the client's).
pub const INTERNAL_ERROR: &str = "XX000";
