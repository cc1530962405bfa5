//! CHAP with MD5 (RFC 1994, RFC 7143 §12.1.3), target side, one-way and mutual.
//!
//! Two states, each a struct; a step consumes the state (rustls style):
//! [`AwaitAlgorithm`] takes CHAP_A and answers CHAP_A, CHAP_I, CHAP_C, becoming
//! [`AwaitResponse`], which checks CHAP_N and CHAP_R (and, for mutual CHAP, answers the
//! initiator's CHAP_I/CHAP_C with our CHAP_N/CHAP_R).
//!
//! Secrets never reach Debug output or a log line: the states print only the user name.

use md5::{Digest, Md5};
use rand::RngCore;

use crate::catalog::ChapSpec;

/// §12.1.3: CHAP_A=5 is MD5, the only algorithm RFC 7143 requires and the only one we do.
pub const CHAP_MD5: u32 = 5;
/// Our challenge length. RFC 1994 leaves it open; 16 random bytes match the MD5 output.
pub const CHALLENGE_LEN: usize = 16;
/// §12.1.3: the challenge "MUST NOT exceed 1024 bytes".
pub const MAX_CHALLENGE_LEN: usize = 1024;
const RESPONSE_LEN: usize = 16;

/// Every CHAP failure is an authentication failure (§11.13.5: 0x0201): the initiator
/// learns nothing about which check failed.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum ChapError {
    #[error("CHAP_A offers no algorithm we support (only 5, MD5)")]
    NoSupportedAlgorithm,
    #[error("a CHAP key required at this step is missing")]
    MissingKey,
    #[error("a CHAP key was sent at the wrong step or twice")]
    UnexpectedKey,
    #[error("a CHAP value is not a valid number")]
    BadEncoding,
    #[error("CHAP_N does not name the configured user")]
    WrongUser,
    #[error("CHAP_R does not match")]
    WrongResponse,
    #[error("the initiator's challenge reflects ours")]
    ReflectedChallenge,
    #[error("the initiator asked for mutual CHAP but none is configured")]
    MutualNotConfigured,
    #[error("mutual CHAP configured with the same secret both ways")]
    SameSecretBothWays,
}

impl ChapError {
    pub fn status(&self) -> (u8, u8) {
        (0x02, 0x01)
    }
}

/// The CHAP keys of one message, each at most once.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChapKeys {
    pub a: Option<String>,
    pub i: Option<String>,
    pub c: Option<String>,
    pub n: Option<String>,
    pub r: Option<String>,
}

impl ChapKeys {
    /// Record a CHAP_* key. A key twice in one message, or an unknown CHAP_ key, fails.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ChapError> {
        let slot = match key {
            "CHAP_A" => &mut self.a,
            "CHAP_I" => &mut self.i,
            "CHAP_C" => &mut self.c,
            "CHAP_N" => &mut self.n,
            "CHAP_R" => &mut self.r,
            _ => return Err(ChapError::UnexpectedKey),
        };
        if slot.is_some() {
            return Err(ChapError::UnexpectedKey);
        }
        *slot = Some(value.to_owned());
        Ok(())
    }
    pub fn is_empty(&self) -> bool {
        *self == ChapKeys::default()
    }
}

/// MD5(identifier || secret || challenge) (RFC 1994 §4.1).
pub fn response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; RESPONSE_LEN] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

/// Equality whose time depends only on the lengths.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// §6.1 binary values: "0x"/"0X" then hex digits, or "0b"/"0B" then base64.
pub fn decode_binary(v: &str) -> Result<Vec<u8>, ChapError> {
    let (prefix, body) = v.split_at(v.len().min(2));
    match prefix {
        "0x" | "0X" => {
            // An odd digit count has an implied leading zero.
            let body = if body.len() % 2 == 1 {
                format!("0{body}")
            } else {
                body.to_owned()
            };
            hex::decode(body).map_err(|_| ChapError::BadEncoding)
        }
        "0b" | "0B" => base64_decode(body).ok_or(ChapError::BadEncoding),
        _ => Err(ChapError::BadEncoding),
    }
}

/// "0x" and lowercase hex: what every initiator parses (libiscsi reads only 0x).
pub fn encode_hex(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

/// RFC 4648 base64 with the standard alphabet; padding optional.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A single leftover sextet cannot encode a byte.
    if s.len() % 4 == 1 {
        return None;
    }
    Some(out)
}

/// §12.1.3 CHAP_I: a number 0..255 (decimal or 0x hex).
fn decode_id(v: &str) -> Result<u8, ChapError> {
    crate::iscsi::params::parse_number(v)
        .and_then(|n| u8::try_from(n).ok())
        .ok_or(ChapError::BadEncoding)
}

/// First state: AuthMethod=CHAP was agreed; waiting for CHAP_A.
pub struct AwaitAlgorithm {
    spec: ChapSpec,
}

impl std::fmt::Debug for AwaitAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwaitAlgorithm")
            .field("user", &self.spec.user)
            .finish_non_exhaustive()
    }
}

impl AwaitAlgorithm {
    pub fn new(spec: ChapSpec) -> AwaitAlgorithm {
        AwaitAlgorithm { spec }
    }

    /// §12.1.3: the initiator sends CHAP_A=<A1,A2...>; the target answers CHAP_A=<A>,
    /// CHAP_I=<I>, CHAP_C=<C>.
    pub fn on_algorithm(
        self,
        keys: &ChapKeys,
        rng: &mut dyn RngCore,
    ) -> Result<(AwaitResponse, Vec<(String, String)>), ChapError> {
        if keys.i.is_some() || keys.c.is_some() || keys.n.is_some() || keys.r.is_some() {
            return Err(ChapError::UnexpectedKey);
        }
        let a = keys.a.as_deref().ok_or(ChapError::MissingKey)?;
        if !a
            .split(',')
            .any(|x| crate::iscsi::params::parse_number(x) == Some(CHAP_MD5))
        {
            return Err(ChapError::NoSupportedAlgorithm);
        }
        let mut id = [0u8; 1];
        rng.fill_bytes(&mut id);
        let mut challenge = [0u8; CHALLENGE_LEN];
        rng.fill_bytes(&mut challenge);
        let reply = vec![
            ("CHAP_A".to_owned(), CHAP_MD5.to_string()),
            ("CHAP_I".to_owned(), id[0].to_string()),
            ("CHAP_C".to_owned(), encode_hex(&challenge)),
        ];
        Ok((
            AwaitResponse {
                spec: self.spec,
                id: id[0],
                challenge,
            },
            reply,
        ))
    }
}

/// Second state: our challenge is out; waiting for CHAP_N and CHAP_R.
pub struct AwaitResponse {
    spec: ChapSpec,
    id: u8,
    challenge: [u8; CHALLENGE_LEN],
}

impl std::fmt::Debug for AwaitResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwaitResponse")
            .field("user", &self.spec.user)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl AwaitResponse {
    /// Check the initiator's answer. On success, returns what to send back: nothing
    /// for one-way CHAP, CHAP_N and CHAP_R for mutual CHAP.
    pub fn verify(self, keys: &ChapKeys) -> Result<Vec<(String, String)>, ChapError> {
        if keys.a.is_some() {
            return Err(ChapError::UnexpectedKey);
        }
        let n = keys.n.as_deref().ok_or(ChapError::MissingKey)?;
        let r = decode_binary(keys.r.as_deref().ok_or(ChapError::MissingKey)?)?;
        let expected = response(self.id, self.spec.secret.as_bytes(), &self.challenge);
        // Compare the response whatever the name, so timing says nothing about either.
        let response_ok = ct_eq(&r, &expected);
        if n != self.spec.user {
            return Err(ChapError::WrongUser);
        }
        if !response_ok {
            return Err(ChapError::WrongResponse);
        }
        // Mutual CHAP: the initiator sends CHAP_I and CHAP_C with its response.
        match (&keys.i, &keys.c) {
            (None, None) => Ok(Vec::new()),
            (Some(i), Some(c)) => {
                let (Some(user), Some(secret)) = (&self.spec.mutual_user, &self.spec.mutual_secret)
                else {
                    return Err(ChapError::MutualNotConfigured);
                };
                // §12.1.3 / §9.2.1: a secret used to authenticate initiators must not also
                // authenticate the target, or a reflected exchange proves nothing.
                if ct_eq(secret.as_bytes(), self.spec.secret.as_bytes()) {
                    return Err(ChapError::SameSecretBothWays);
                }
                let id = decode_id(i)?;
                let c = decode_binary(c)?;
                if c.is_empty() || c.len() > MAX_CHALLENGE_LEN {
                    return Err(ChapError::BadEncoding);
                }
                // §12.1.3: "the target MUST ... verify that the initiator's challenge
                // differs from its own" — a reflected challenge would let an attacker
                // get our answer to our own question.
                if ct_eq(&c, &self.challenge) {
                    return Err(ChapError::ReflectedChallenge);
                }
                let ours = response(id, secret.as_bytes(), &c);
                Ok(vec![
                    ("CHAP_N".to_owned(), user.clone()),
                    ("CHAP_R".to_owned(), encode_hex(&ours)),
                ])
            }
            _ => Err(ChapError::MissingKey),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::mock::StepRng;

    fn spec(mutual: bool) -> ChapSpec {
        ChapSpec {
            user: "alice".into(),
            secret: "initiator-secret".into(),
            mutual_user: mutual.then(|| "target".into()),
            mutual_secret: mutual.then(|| "target-secret-x".into()),
        }
    }

    fn keys(pairs: &[(&str, &str)]) -> ChapKeys {
        let mut k = ChapKeys::default();
        for (a, b) in pairs {
            k.set(a, b).unwrap();
        }
        k
    }

    fn challenge_of(reply: &[(String, String)]) -> (u8, Vec<u8>) {
        let i = reply.iter().find(|p| p.0 == "CHAP_I").unwrap();
        let c = reply.iter().find(|p| p.0 == "CHAP_C").unwrap();
        (i.1.parse().unwrap(), decode_binary(&c.1).unwrap())
    }

    #[test]
    fn rfc1994_md5_vector() {
        // MD5 of 0x01 || "secret" || 16 zero bytes, computed independently.
        let r = response(1, b"secret", &[0u8; 16]);
        let mut h = Md5::new();
        h.update(b"\x01secret");
        h.update([0u8; 16]);
        assert_eq!(r, <[u8; 16]>::from(h.finalize()));
    }

    #[test]
    fn encodings() {
        assert_eq!(decode_binary("0x0aff").unwrap(), vec![0x0a, 0xff]);
        assert_eq!(decode_binary("0XaFf").unwrap(), vec![0x0a, 0xff]);
        assert_eq!(decode_binary("0bAQID").unwrap(), vec![1, 2, 3]);
        assert_eq!(decode_binary("0b/w==").unwrap(), vec![0xff]);
        assert_eq!(decode_binary("0b/w").unwrap(), vec![0xff]);
        assert!(decode_binary("1234").is_err());
        assert!(decode_binary("0xzz").is_err());
        assert!(decode_binary("0b*").is_err());
        assert!(decode_binary("0bA").is_err());
        assert!(decode_binary("").is_err());
        assert_eq!(encode_hex(&[1, 0xab]), "0x01ab");
        assert!(ct_eq(b"abc", b"abc") && !ct_eq(b"abc", b"abd") && !ct_eq(b"a", b"ab"));
    }

    #[test]
    fn one_way_success_and_failures() {
        let mut rng = StepRng::new(7, 13);
        let (st, reply) = AwaitAlgorithm::new(spec(false))
            .on_algorithm(&keys(&[("CHAP_A", "7,5")]), &mut rng)
            .unwrap();
        assert_eq!(reply[0], ("CHAP_A".into(), "5".into()));
        let (id, c) = challenge_of(&reply);
        assert_eq!(c.len(), CHALLENGE_LEN);
        let good = encode_hex(&response(id, b"initiator-secret", &c));
        let bad = encode_hex(&response(id, b"wrong", &c));
        assert!(format!("{st:?}").contains("alice") && !format!("{st:?}").contains("secret"));

        let redo = |st: &AwaitResponse| AwaitResponse {
            spec: st.spec.clone(),
            id: st.id,
            challenge: st.challenge,
        };
        assert_eq!(
            redo(&st).verify(&keys(&[("CHAP_N", "alice"), ("CHAP_R", &bad)])),
            Err(ChapError::WrongResponse)
        );
        assert_eq!(
            redo(&st).verify(&keys(&[("CHAP_N", "bob"), ("CHAP_R", &good)])),
            Err(ChapError::WrongUser)
        );
        assert_eq!(
            redo(&st).verify(&keys(&[("CHAP_N", "alice")])),
            Err(ChapError::MissingKey)
        );
        // Mutual requested, none configured.
        assert_eq!(
            redo(&st).verify(&keys(&[
                ("CHAP_N", "alice"),
                ("CHAP_R", &good),
                ("CHAP_I", "3"),
                ("CHAP_C", "0x0102030405")
            ])),
            Err(ChapError::MutualNotConfigured)
        );
        assert_eq!(
            st.verify(&keys(&[("CHAP_N", "alice"), ("CHAP_R", &good)])),
            Ok(vec![])
        );
    }

    #[test]
    fn algorithm_must_include_md5() {
        let mut rng = StepRng::new(1, 1);
        assert_eq!(
            AwaitAlgorithm::new(spec(false))
                .on_algorithm(&keys(&[("CHAP_A", "6,7")]), &mut rng)
                .unwrap_err(),
            ChapError::NoSupportedAlgorithm
        );
        assert_eq!(
            AwaitAlgorithm::new(spec(false))
                .on_algorithm(&keys(&[("CHAP_N", "x")]), &mut rng)
                .unwrap_err(),
            ChapError::UnexpectedKey
        );
    }

    #[test]
    fn mutual_success_and_reflection() {
        let mut rng = StepRng::new(99, 0x0101_0101);
        let (st, reply) = AwaitAlgorithm::new(spec(true))
            .on_algorithm(&keys(&[("CHAP_A", "5")]), &mut rng)
            .unwrap();
        let (id, c) = challenge_of(&reply);
        let good = encode_hex(&response(id, b"initiator-secret", &c));
        let st2 = AwaitResponse {
            spec: st.spec.clone(),
            id: st.id,
            challenge: st.challenge,
        };
        // Reflected: the initiator sends our own challenge back.
        let ours = encode_hex(&c);
        assert_eq!(
            st2.verify(&keys(&[
                ("CHAP_N", "alice"),
                ("CHAP_R", &good),
                ("CHAP_I", "9"),
                ("CHAP_C", &ours)
            ])),
            Err(ChapError::ReflectedChallenge)
        );
        let ic = [0x5au8; 20];
        let out = st
            .verify(&keys(&[
                ("CHAP_N", "alice"),
                ("CHAP_R", &good),
                ("CHAP_I", "200"),
                ("CHAP_C", &encode_hex(&ic)),
            ]))
            .unwrap();
        assert_eq!(out[0], ("CHAP_N".into(), "target".into()));
        assert_eq!(
            out[1].1,
            encode_hex(&response(200, b"target-secret-x", &ic))
        );
    }

    #[test]
    fn same_secret_both_ways_refused() {
        let mut s = spec(true);
        s.mutual_secret = Some(s.secret.clone());
        let mut rng = StepRng::new(5, 5);
        let (st, reply) = AwaitAlgorithm::new(s)
            .on_algorithm(&keys(&[("CHAP_A", "5")]), &mut rng)
            .unwrap();
        let (id, c) = challenge_of(&reply);
        let good = encode_hex(&response(id, b"initiator-secret", &c));
        assert_eq!(
            st.verify(&keys(&[
                ("CHAP_N", "alice"),
                ("CHAP_R", &good),
                ("CHAP_I", "1"),
                ("CHAP_C", "0x11223344556677889900")
            ])),
            Err(ChapError::SameSecretBothWays)
        );
    }
}
