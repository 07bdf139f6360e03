//! SCRAM channel binding's `tls-server-end-point` data (RFC 5929 §4): a hash
//! of the certificate pgherd presents to clients. A client that checks it
//! (`SCRAM-SHA-256-PLUS`, libpq's `channel_binding=require`) knows its
//! SCRAM exchange ran over a TLS connection to the holder of that
//! certificate, not through a man in the middle.
//!
//! The hash is the one the certificate is signed with (SHA-256 for MD5 and
//! SHA-1); a certificate signed otherwise (Ed25519, RSASSA-PSS) has no
//! defined binding, and then `-PLUS` is not offered. Only the signature
//! algorithm's identifier is read from the certificate: a few lines of DER
//! instead of an X.509 parser.

use sha2::{Digest, Sha256, Sha384, Sha512};

/// Which hash a certificate's binding uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

/// The `tls-server-end-point` data of a DER certificate; `None` when its
/// signature algorithm defines none.
pub(crate) fn tls_server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    Some(match hash_for(signature_algorithm(cert)?)? {
        Hash::Sha256 => Sha256::digest(cert).to_vec(),
        Hash::Sha384 => Sha384::digest(cert).to_vec(),
        Hash::Sha512 => Sha512::digest(cert).to_vec(),
    })
}

/// RSA PKCS#1 v1.5 signatures: 1.2.840.113549.1.1.{4,5,11,12,13}.
const RSA_PREFIX: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
/// ECDSA: 1.2.840.10045.4.1 (SHA-1) and 1.2.840.10045.4.3.{2,3,4}.
const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
const ECDSA_SHA2_PREFIX: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];

/// The hash for a signature algorithm (the OID's content bytes).
fn hash_for(oid: &[u8]) -> Option<Hash> {
    if oid == ECDSA_SHA1 {
        return Some(Hash::Sha256);
    }
    let (prefix, last) = oid.split_at(oid.len().checked_sub(1)?);
    match (prefix, last) {
        // md5, sha1 (upgraded to SHA-256 by RFC 5929), sha256
        (RSA_PREFIX, [4 | 5 | 11]) | (ECDSA_SHA2_PREFIX, [2]) => Some(Hash::Sha256),
        (RSA_PREFIX, [12]) | (ECDSA_SHA2_PREFIX, [3]) => Some(Hash::Sha384),
        (RSA_PREFIX, [13]) | (ECDSA_SHA2_PREFIX, [4]) => Some(Hash::Sha512),
        _ => None,
    }
}

/// The `signatureAlgorithm` identifier of a DER certificate:
/// `SEQUENCE { tbsCertificate SEQUENCE, signatureAlgorithm SEQUENCE { OID, ... }, ... }`.
fn signature_algorithm(der: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    let (SEQUENCE, certificate, _) = tlv(der)? else {
        return None;
    };
    let (SEQUENCE, _tbs, rest) = tlv(certificate)? else {
        return None;
    };
    let (SEQUENCE, algorithm, _) = tlv(rest)? else {
        return None;
    };
    let (OID, oid, _) = tlv(algorithm)? else {
        return None;
    };
    Some(oid)
}

/// One DER element: its tag, its contents and what follows it.
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_hash_follows_the_signature_algorithm() {
        let p256 = certificate(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            tls_server_end_point(&p256),
            Some(Sha256::digest(&p256).to_vec())
        );
        let p384 = certificate(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(
            tls_server_end_point(&p384),
            Some(Sha384::digest(&p384).to_vec())
        );
        // Ed25519 defines no binding: -PLUS is not offered.
        assert_eq!(
            tls_server_end_point(&certificate(&rcgen::PKCS_ED25519)),
            None
        );
    }

    #[test]
    fn rsa_identifiers_map_as_rfc_5929_says() {
        let rsa = |last: u8| [RSA_PREFIX, &[last]].concat();
        assert_eq!(hash_for(&rsa(4)), Some(Hash::Sha256), "md5");
        assert_eq!(hash_for(&rsa(5)), Some(Hash::Sha256), "sha1");
        assert_eq!(hash_for(&rsa(11)), Some(Hash::Sha256));
        assert_eq!(hash_for(&rsa(12)), Some(Hash::Sha384));
        assert_eq!(hash_for(&rsa(13)), Some(Hash::Sha512));
        assert_eq!(hash_for(&rsa(10)), None, "RSASSA-PSS");
        assert_eq!(hash_for(ECDSA_SHA1), Some(Hash::Sha256));
        assert_eq!(hash_for(&[]), None);
    }

    #[test]
    fn garbage_is_no_certificate() {
        assert_eq!(tls_server_end_point(b""), None);
        assert_eq!(tls_server_end_point(&[0x30, 0x82, 0xff]), None);
        assert_eq!(tls_server_end_point(&[0x30, 0x03, 0x02, 0x01, 0x00]), None);
    }
}
