//! The server side of SCRAM-SHA-256 (RFC 5802 / RFC 7677), as PostgreSQL does it.
//!
//! The exchange, with the messages PostgreSQL wraps them in:
//!
//! ```text
//! client                                   pgherd
//!   SASLInitialResponse  n,,n=,r=<cnonce>  ──►
//!                       ◄── AuthenticationSASLContinue  r=<cnonce+snonce>,s=<salt>,i=<iter>
//!   SASLResponse  c=biws,r=<nonce>,p=<proof>  ──►
//!                       ◄── AuthenticationSASLFinal  v=<server signature>
//! ```
//!
//! The verifier holds `StoredKey = H(ClientKey)` and `ServerKey`; the client
//! proves it knows `ClientKey` with `proof = ClientKey XOR HMAC(StoredKey, AuthMessage)`.
//! A side effect worth keeping: a successful exchange *recovers* `ClientKey`,
//! which is enough to log in to a PostgreSQL server holding the same verifier.
//!
//! Over TLS the exchange can be bound to the connection
//! (`SCRAM-SHA-256-PLUS`, `tls-server-end-point`): the client's final
//! message then carries a hash of the certificate it saw, which must be
//! pgherd's, so a man in the middle with another certificate cannot relay
//! the exchange.
//!
//! An unknown user gets a full exchange against a made-up verifier derived
//! from a per-process secret, so the failure looks the same as a wrong
//! password and the answer does not reveal whether the user exists.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// SCRAM without channel binding, offered to every client.
pub const MECHANISM: &str = "SCRAM-SHA-256";

/// SCRAM with `tls-server-end-point` channel binding, offered over TLS
/// when pgherd's certificate defines binding data
/// ([`ScramServer::with_channel_binding`]).
pub const MECHANISM_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// The one channel binding type PostgreSQL (and pgherd) supports.
const TLS_SERVER_END_POINT: &str = "tls-server-end-point";

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// The client's message does not follow the protocol (SQLSTATE 08P01).
    #[error("malformed SCRAM message: {0}")]
    Protocol(&'static str),
    /// The proof was wrong, or the user is unknown (SQLSTATE 28P01).
    #[error("password authentication failed")]
    AuthFailed,
}

/// A parsed `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>` verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramVerifier(***)")
    }
}

impl ScramVerifier {
    /// Parses a verifier as stored in `pg_authid.rolpassword`.
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix("SCRAM-SHA-256$")?;
        let (iter_salt, keys) = rest.split_once('$')?;
        let (iterations, salt) = iter_salt.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let iterations: u32 = iterations.parse().ok().filter(|&i| i > 0)?;
        Some(ScramVerifier {
            iterations,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?.try_into().ok()?,
            server_key: B64.decode(server).ok()?.try_into().ok()?,
        })
    }

    /// Whether `password` is the one this verifier was made from (for HTTP
    /// basic auth on the admin port, where the client sends the password).
    /// Costs `iterations` HMACs: a few milliseconds at PostgreSQL's 4096.
    pub fn verify_password(&self, password: &str) -> bool {
        // Hi() of RFC 5802: PBKDF2 with HMAC-SHA-256 and one output block.
        let mut block = self.salt.clone();
        block.extend_from_slice(&1u32.to_be_bytes());
        let mut u = hmac(password.as_bytes(), &block);
        let mut salted = u;
        for _ in 1..self.iterations {
            u = hmac(password.as_bytes(), &u);
            for (s, b) in salted.iter_mut().zip(u) {
                *s ^= b;
            }
        }
        let client_key = hmac(&salted, b"Client Key");
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        stored.ct_eq(&self.stored_key).into()
    }

    /// A stand-in verifier for a user that does not exist: stable for a given
    /// user within one process, so repeated attempts look like a real user.
    pub fn mock(user: &str, process_secret: &[u8; 32]) -> Self {
        let salt = hmac(process_secret, user.as_bytes());
        let mut stored_key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut stored_key);
        ScramVerifier {
            iterations: 4096,
            salt: salt[..16].to_vec(),
            stored_key,
            server_key: stored_key,
        }
    }
}

enum State {
    AwaitingClientFirst,
    AwaitingClientFinal {
        client_first_bare: String,
        server_first: String,
        nonce: String,
        /// The client's GS2 header (`n,,`, `y,,` or
        /// `p=tls-server-end-point,,`), which its final message repeats
        /// with the binding data.
        gs2_header: String,
        binding: Option<Arc<[u8]>>,
    },
    Done,
}

/// One SCRAM-SHA-256 exchange, server side. Sans-IO: feed it the client's
/// messages, send back what it returns.
pub struct ScramServer {
    verifier: ScramVerifier,
    /// False for a mock verifier: the exchange runs but can never succeed.
    real: bool,
    state: State,
    /// `tls-server-end-point` data of the TLS connection this runs over.
    binding: Option<Arc<[u8]>>,
    /// The client chose [`MECHANISM_PLUS`].
    plus: bool,
}

impl std::fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramServer").finish_non_exhaustive()
    }
}

impl ScramServer {
    /// Starts an exchange against `verifier`; `None` runs a mock exchange that
    /// always fails at the proof.
    pub fn new(verifier: Option<ScramVerifier>, user: &str, process_secret: &[u8; 32]) -> Self {
        let real = verifier.is_some();
        let verifier = verifier.unwrap_or_else(|| ScramVerifier::mock(user, process_secret));
        ScramServer {
            verifier,
            real,
            state: State::AwaitingClientFirst,
            binding: None,
            plus: false,
        }
    }

    /// The exchange runs over TLS with this channel binding data for the
    /// server's certificate: [`MECHANISM_PLUS`] is offered, and a client
    /// that could bind but thinks the server cannot is refused (a
    /// downgrade).
    pub fn with_channel_binding(mut self, data: Option<Arc<[u8]>>) -> Self {
        self.binding = data;
        self
    }

    /// The mechanisms to offer, preferred first.
    pub fn mechanisms(&self) -> &'static [&'static str] {
        match self.binding {
            Some(_) => &[MECHANISM_PLUS, MECHANISM],
            None => &[MECHANISM],
        }
    }

    /// Takes the mechanism the client chose (SASLInitialResponse), before
    /// its client-first message.
    pub fn select(&mut self, mechanism: &str) -> Result<(), ScramError> {
        self.plus = match mechanism {
            MECHANISM => false,
            MECHANISM_PLUS if self.binding.is_some() => true,
            _ => {
                return Err(ScramError::Protocol(
                    "client selected an invalid SASL authentication mechanism",
                ))
            }
        };
        Ok(())
    }

    /// Takes the client-first message, returns the server-first message.
    pub fn client_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, State::AwaitingClientFirst) {
            return Err(ScramError::Protocol("unexpected client-first message"));
        }
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Protocol("not UTF-8"))?;
        // gs2-header: channel binding flag, optional authzid, then the bare message.
        let (cbind, rest) = msg
            .split_once(',')
            .ok_or(ScramError::Protocol("missing GS2 header"))?;
        let binding = match (cbind, cbind.strip_prefix("p=")) {
            ("n" | "y", _) if self.plus => {
                return Err(ScramError::Protocol(
                    "the client selected SCRAM-SHA-256-PLUS but sent no channel binding data",
                ))
            }
            ("n", _) => None,
            ("y", _) if self.binding.is_some() => {
                return Err(ScramError::Protocol(
                    "SCRAM channel binding negotiation error: the client supports \
                     channel binding and thinks the server does not, but it does",
                ))
            }
            ("y", _) => None,
            (_, Some(_)) if !self.plus => {
                return Err(ScramError::Protocol(
                    "the client selected SCRAM-SHA-256 but sent channel binding data",
                ))
            }
            (_, Some(TLS_SERVER_END_POINT)) => self.binding.clone(),
            (_, Some(_)) => {
                return Err(ScramError::Protocol(
                    "unsupported SCRAM channel-binding type",
                ))
            }
            _ => return Err(ScramError::Protocol("invalid channel binding flag")),
        };
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Protocol("missing GS2 header"))?;
        let gs2_header = msg[..msg.len() - bare.len()].to_owned();
        if !authzid.is_empty() {
            return Err(ScramError::Protocol(
                "authorization identity is not supported",
            ));
        }
        let mut client_nonce = None;
        for attr in bare.split(',') {
            if let Some(r) = attr.strip_prefix("r=") {
                client_nonce = Some(r);
            } else if attr.starts_with("m=") {
                return Err(ScramError::Protocol(
                    "mandatory extensions are not supported",
                ));
            }
        }
        let client_nonce = client_nonce
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic() && b != b','))
            .ok_or(ScramError::Protocol("missing or invalid client nonce"))?;
        let mut raw = [0u8; 18];
        rand::thread_rng().fill_bytes(&mut raw);
        let nonce = format!("{client_nonce}{}", B64.encode(raw));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        self.state = State::AwaitingClientFinal {
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
            nonce,
            gs2_header,
            binding,
        };
        Ok(server_first.into_bytes())
    }

    /// Takes the client-final message. On success returns the server-final
    /// message and the client's recovered `ClientKey`.
    pub fn client_final(&mut self, msg: &[u8]) -> Result<(Vec<u8>, [u8; 32]), ScramError> {
        let State::AwaitingClientFinal {
            client_first_bare,
            server_first,
            nonce,
            gs2_header,
            binding,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(ScramError::Protocol("unexpected client-final message"));
        };
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Protocol("not UTF-8"))?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(ScramError::Protocol("missing proof"))?;
        let mut got_nonce = None;
        let mut got_cbind = None;
        for attr in without_proof.split(',') {
            if let Some(r) = attr.strip_prefix("r=") {
                got_nonce = Some(r);
            } else if let Some(c) = attr.strip_prefix("c=") {
                got_cbind = Some(c);
            }
        }
        // The client repeats its GS2 header, followed by the binding data
        // when it binds: "biws" is "n,,".
        let mut expected = gs2_header.into_bytes();
        expected.extend_from_slice(binding.as_deref().unwrap_or_default());
        if got_cbind != Some(B64.encode(expected).as_str()) {
            return Err(ScramError::Protocol("SCRAM channel binding check failed"));
        }
        if got_nonce != Some(nonce.as_str()) {
            return Err(ScramError::Protocol("nonce mismatch"));
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Protocol("malformed proof"))?;
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for (k, (p, s)) in client_key
            .iter_mut()
            .zip(proof.iter().zip(client_signature.iter()))
        {
            *k = p ^ s;
        }
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        let matches: bool = stored.ct_eq(&self.verifier.stored_key).into();
        if !(matches && self.real) {
            return Err(ScramError::AuthFailed);
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        let server_final = format!("v={}", B64.encode(server_signature));
        Ok((server_final.into_bytes(), client_key))
    }
}

/// The client side of SCRAM-SHA-256 for logging in to a PostgreSQL server
/// *without* the password: with the `ClientKey` recovered from the client's own
/// SCRAM exchange and the `ServerKey` of the same verifier. This works when the
/// server stores the same verifier (same salt and iteration count) as pgherd,
/// which is the case when the verifier was copied from `pg_authid`.
pub struct ScramKeysClient {
    client_key: [u8; 32],
    verifier: ScramVerifier,
    client_first_bare: String,
    nonce: String,
    expected_server_signature: Option<[u8; 32]>,
}

impl std::fmt::Debug for ScramKeysClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramKeysClient").finish_non_exhaustive()
    }
}

/// Why a login with recovered SCRAM keys failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramClientError {
    #[error("malformed SCRAM message from server: {0}")]
    Protocol(&'static str),
    #[error(
        "the server's SCRAM verifier for this user differs from pgherd's (salt or iteration \
         count); copy pg_authid.rolpassword into the config, or set a server_password"
    )]
    VerifierMismatch,
    #[error("the server's SCRAM signature is wrong")]
    BadServerSignature,
}

impl ScramKeysClient {
    pub fn new(client_key: [u8; 32], verifier: ScramVerifier) -> Self {
        let mut raw = [0u8; 18];
        rand::thread_rng().fill_bytes(&mut raw);
        let nonce = B64.encode(raw);
        ScramKeysClient {
            client_key,
            verifier,
            client_first_bare: format!("n=,r={nonce}"),
            nonce,
            expected_server_signature: None,
        }
    }

    /// The client-first message (for `SASLInitialResponse`).
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// Takes the server-first message, returns the client-final message.
    pub fn server_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramClientError> {
        let msg = std::str::from_utf8(msg).map_err(|_| ScramClientError::Protocol("not UTF-8"))?;
        let (mut nonce, mut salt, mut iterations) = (None, None, None);
        for attr in msg.split(',') {
            if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            } else if let Some(v) = attr.strip_prefix("s=") {
                salt = Some(v);
            } else if let Some(v) = attr.strip_prefix("i=") {
                iterations = Some(v);
            }
        }
        let nonce = nonce
            .filter(|n| n.starts_with(&self.nonce) && n.len() > self.nonce.len())
            .ok_or(ScramClientError::Protocol("bad nonce"))?;
        let salt = salt
            .and_then(|s| B64.decode(s).ok())
            .ok_or(ScramClientError::Protocol("bad salt"))?;
        let iterations: u32 = iterations
            .and_then(|i| i.parse().ok())
            .ok_or(ScramClientError::Protocol("bad iteration count"))?;
        if salt != self.verifier.salt || iterations != self.verifier.iterations {
            return Err(ScramClientError::VerifierMismatch);
        }
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{msg},{without_proof}", self.client_first_bare);
        let stored_key: [u8; 32] = Sha256::digest(self.client_key).into();
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let mut proof = self.client_key;
        for (p, s) in proof.iter_mut().zip(signature.iter()) {
            *p ^= s;
        }
        self.expected_server_signature =
            Some(hmac(&self.verifier.server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks the server-final message.
    pub fn server_final(&self, msg: &[u8]) -> Result<(), ScramClientError> {
        let expected = self
            .expected_server_signature
            .ok_or(ScramClientError::Protocol(
                "server-final before server-first",
            ))?;
        let got = std::str::from_utf8(msg)
            .ok()
            .and_then(|m| m.strip_prefix("v="))
            .and_then(|v| B64.decode(v).ok())
            .ok_or(ScramClientError::Protocol("bad server-final message"))?;
        if bool::from(got.as_slice().ct_eq(&expected)) {
            Ok(())
        } else {
            Err(ScramClientError::BadServerSignature)
        }
    }
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod password_tests {
    use super::*;

    #[test]
    fn plaintext_passwords_check_against_postgres_verifiers() {
        let v = ScramVerifier::parse(&crate::make_scram_verifier("s3cret")).unwrap();
        assert!(v.verify_password("s3cret"));
        assert!(!v.verify_password("s3cret "));
        assert!(!v.verify_password(""));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    const SECRET: [u8; 32] = [7; 32];

    fn run(verifier: Option<ScramVerifier>, password: &str) -> Result<[u8; 32], ScramError> {
        let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let mut server = ScramServer::new(verifier, "alice", &SECRET);
        let server_first = server.client_first(client.message())?;
        client
            .update(&server_first)
            .expect("client accepts server-first");
        let (server_final, key) = server.client_final(client.message())?;
        client
            .finish(&server_final)
            .expect("client verifies the server signature");
        Ok(key)
    }

    #[test]
    fn real_client_authenticates_against_postgres_style_verifier() {
        let v = ScramVerifier::parse(&crate::make_scram_verifier("s3cret")).unwrap();
        run(Some(v.clone()), "s3cret").unwrap();
        assert_eq!(run(Some(v), "wrong"), Err(ScramError::AuthFailed));
    }

    #[test]
    fn recovered_client_key_hashes_to_stored_key() {
        let v = ScramVerifier::parse(&crate::make_scram_verifier("pw")).unwrap();
        let key = run(Some(v.clone()), "pw").unwrap();
        let stored: [u8; 32] = Sha256::digest(key).into();
        assert_eq!(stored, v.stored_key);
    }

    #[test]
    fn unknown_user_fails_like_a_wrong_password() {
        assert_eq!(run(None, "anything"), Err(ScramError::AuthFailed));
    }

    #[test]
    fn mock_salt_is_stable_per_user() {
        let a = ScramVerifier::mock("bob", &SECRET);
        let b = ScramVerifier::mock("bob", &SECRET);
        assert_eq!(a.salt, b.salt);
        assert_ne!(a.salt, ScramVerifier::mock("carol", &SECRET).salt);
    }

    #[test]
    fn parses_a_verifier_from_pg_authid() {
        // The format of pg_authid.rolpassword.
        let v = ScramVerifier::parse(
            "SCRAM-SHA-256$4096:wC4BEZfMZaZmJ4uf5Cc6kQ==$wvr9ohCOmIvZjnXJwX6eSMBcb7DBkV3VgZTCz3lHzss=:DKxOrCUVvxWiSXQm1GqeAb7TPyjgqV4wpeaDxbpmg/U=",
        )
        .unwrap();
        assert_eq!(v.iterations, 4096);
        assert_eq!(v.salt.len(), 16);
        for bad in [
            "md5abc",
            "SCRAM-SHA-256$0:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$4096:c2FsdA==",
        ] {
            assert!(ScramVerifier::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn protocol_errors() {
        let mut s = ScramServer::new(None, "u", &SECRET);
        assert!(matches!(
            s.client_first(b"p=tls-server-end-point,,n=,r=abc"),
            Err(ScramError::Protocol(_))
        ));
        let mut s = ScramServer::new(None, "u", &SECRET);
        assert!(matches!(
            s.client_first(b"n,,n="),
            Err(ScramError::Protocol(_))
        ));
        let mut s = ScramServer::new(None, "u", &SECRET);
        assert!(matches!(
            s.client_final(b"c=biws,r=x,p=AAAA"),
            Err(ScramError::Protocol(_))
        ));
        let mut s = ScramServer::new(None, "u", &SECRET);
        s.client_first(b"n,,n=,r=abc").unwrap();
        assert!(matches!(
            s.client_final(b"c=biws,r=other,p=AAAA"),
            Err(ScramError::Protocol("nonce mismatch"))
        ));
    }

    /// An exchange over TLS whose server certificate binds to `server_cert`,
    /// the client choosing `mechanism` and seeing `client_binding`.
    fn run_bound(
        server_cert: &[u8],
        mechanism: &str,
        client_binding: ChannelBinding,
    ) -> Result<[u8; 32], ScramError> {
        let v = ScramVerifier::parse(&crate::make_scram_verifier("pw")).unwrap();
        let mut client = ScramSha256::new(b"pw", client_binding);
        let mut server = ScramServer::new(Some(v), "alice", &SECRET)
            .with_channel_binding(Some(Arc::from(server_cert)));
        assert_eq!(server.mechanisms(), [MECHANISM_PLUS, MECHANISM]);
        server.select(mechanism)?;
        let server_first = server.client_first(client.message())?;
        client.update(&server_first).unwrap();
        let (server_final, key) = server.client_final(client.message())?;
        client.finish(&server_final).unwrap();
        Ok(key)
    }

    #[test]
    fn channel_binding_ties_the_exchange_to_the_certificate() {
        let cert = [42u8; 32];
        let bound = || ChannelBinding::tls_server_end_point(cert.to_vec());
        assert!(run_bound(&cert, MECHANISM_PLUS, bound()).is_ok());
        // A client that saw another certificate (a man in the middle).
        let other = ChannelBinding::tls_server_end_point(vec![7u8; 32]);
        assert_eq!(
            run_bound(&cert, MECHANISM_PLUS, other),
            Err(ScramError::Protocol("SCRAM channel binding check failed"))
        );
        // A client that cannot bind uses the plain mechanism ("n").
        assert!(run_bound(&cert, MECHANISM, ChannelBinding::unsupported()).is_ok());
        // "y": it could bind but thinks the server cannot: a downgrade.
        let downgraded = run_bound(&cert, MECHANISM, ChannelBinding::unrequested());
        assert!(
            matches!(downgraded, Err(ScramError::Protocol(m)) if m.contains("negotiation")),
            "{downgraded:?}"
        );
        // Mechanism and message must agree.
        assert!(run_bound(&cert, MECHANISM, bound()).is_err());
        assert!(run_bound(&cert, MECHANISM_PLUS, ChannelBinding::unsupported()).is_err());
    }

    #[test]
    fn a_binding_type_other_than_tls_server_end_point_is_refused() {
        let mut s = ScramServer::new(None, "u", &SECRET)
            .with_channel_binding(Some(Arc::from(&[1u8; 32][..])));
        s.select(MECHANISM_PLUS).unwrap();
        assert_eq!(
            s.client_first(b"p=tls-unique,,n=,r=abc"),
            Err(ScramError::Protocol(
                "unsupported SCRAM channel-binding type"
            ))
        );
        let mut s = ScramServer::new(None, "u", &SECRET);
        assert_eq!(
            s.client_first(b"x,,n=,r=abc"),
            Err(ScramError::Protocol("invalid channel binding flag"))
        );
    }

    #[test]
    fn plus_is_neither_offered_nor_accepted_without_binding_data() {
        let mut s = ScramServer::new(None, "u", &SECRET);
        assert_eq!(s.mechanisms(), [MECHANISM]);
        assert!(s.select(MECHANISM_PLUS).is_err());
        assert!(s.select("SCRAM-SHA-1").is_err());
        assert!(s.select(MECHANISM).is_ok());
        // Without binding on offer, "y" is fine.
        let v = ScramVerifier::parse(&crate::make_scram_verifier("pw")).unwrap();
        let mut client = ScramSha256::new(b"pw", ChannelBinding::unrequested());
        let mut server = ScramServer::new(Some(v), "alice", &SECRET);
        let first = server.client_first(client.message()).unwrap();
        client.update(&first).unwrap();
        assert!(server.client_final(client.message()).is_ok());
    }

    #[test]
    fn recovered_keys_log_in_to_a_server_with_the_same_verifier() {
        let v = ScramVerifier::parse(&crate::make_scram_verifier("pw")).unwrap();
        let key = run(Some(v.clone()), "pw").unwrap();
        // pgherd, as a client, against a server holding the same verifier.
        let mut upstream = ScramServer::new(Some(v.clone()), "alice", &SECRET);
        let mut client = ScramKeysClient::new(key, v.clone());
        let server_first = upstream.client_first(&client.client_first()).unwrap();
        let client_final = client.server_first(&server_first).unwrap();
        let (server_final, _) = upstream.client_final(&client_final).unwrap();
        client.server_final(&server_final).unwrap();
        assert_eq!(
            client.server_final(b"v=AAAA"),
            Err(ScramClientError::BadServerSignature)
        );
        // A server with another salt cannot be answered with these keys.
        let other = ScramVerifier::parse(&crate::make_scram_verifier("pw")).unwrap();
        let mut upstream = ScramServer::new(Some(other), "alice", &SECRET);
        let mut client = ScramKeysClient::new(key, v);
        let server_first = upstream.client_first(&client.client_first()).unwrap();
        assert_eq!(
            client.server_first(&server_first),
            Err(ScramClientError::VerifierMismatch)
        );
    }
}
