//! Compute identifiers: `cid:<provider>/<region>/<domain>/<node>[/<device>[/<sub-device>]]`.
//!
//! A CID names a resource by where it sits, coarse to fine. Any leading part of a CID is itself
//! a CID that addresses everything beneath it (`cid:acme/cn-east-1` is the whole region).
//! Ordering is segment by segment, so every CID under a prefix sorts into one contiguous run
//! right after the prefix itself; range scans over sorted CIDs rely on that.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub const SCHEME: &str = "cid:";
pub const MAX_SEGMENT_LEN: usize = 63;

/// What each position in a CID means; used to name the segment an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Provider,
    Region,
    Domain,
    Node,
    Device,
    SubDevice,
}

impl Level {
    pub const ALL: [Level; 6] = [
        Level::Provider,
        Level::Region,
        Level::Domain,
        Level::Node,
        Level::Device,
        Level::SubDevice,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Level::Provider => "provider",
            Level::Region => "region",
            Level::Domain => "domain",
            Level::Node => "node",
            Level::Device => "device",
            Level::SubDevice => "sub-device",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidError {
    #[error("compute identifier {} must start with \"cid:\"", quoted(.input))]
    MissingScheme { input: String },
    #[error("compute identifier {} has no segments after \"cid:\"", quoted(.input))]
    NoSegments { input: String },
    #[error(
        "compute identifier {} has {count} segments; at most 6 \
         (provider/region/domain/node/device/sub-device)",
        quoted(.input)
    )]
    TooManySegments { input: String, count: usize },
    #[error("{level} segment of {} is empty", quoted(.input))]
    EmptySegment { input: String, level: Level },
    #[error("{level} segment {} is {len} characters long; at most 63", quoted(.segment))]
    SegmentTooLong {
        level: Level,
        segment: String,
        len: usize,
    },
    #[error(
        "{level} segment {} has upper-case {ch:?} at position {position}; \
         segments are lowercase",
        quoted(.segment)
    )]
    UpperCase {
        level: Level,
        segment: String,
        ch: char,
        position: usize,
    },
    #[error(
        "{level} segment {} has {ch:?} at position {position}; \
         allowed are a-z, 0-9, '-', '_' and '.'",
        quoted(.segment)
    )]
    InvalidChar {
        level: Level,
        segment: String,
        ch: char,
        position: usize,
    },
    #[error(
        "{level} segment {segment:?} is not allowed: \".\" and \"..\" mean directories, not names"
    )]
    DotSegment { level: Level, segment: String },
    #[error("compute identifier {cid} is not a {expected} identifier (it has {depth} segments)")]
    WrongDepth {
        cid: String,
        expected: Level,
        depth: usize,
    },
}

/// Longest user text an error quotes in full; longer text is cut so an error stays readable
/// (and fits a gRPC status) however long the input was.
const QUOTE_LIMIT: usize = 80;

/// `text` in quotes, cut to [`QUOTE_LIMIT`] characters with its full length said.
pub fn quoted(text: &str) -> String {
    let len = text.chars().count();
    if len <= QUOTE_LIMIT {
        return format!("{text:?}");
    }
    let head: String = text.chars().take(QUOTE_LIMIT).collect();
    format!("{head:?}… ({len} characters)")
}

/// Checks one segment against the CID alphabet, naming the level in any error.
pub fn validate_segment(level: Level, segment: &str) -> Result<(), CidError> {
    if segment.is_empty() {
        return Err(CidError::EmptySegment {
            input: segment.to_string(),
            level,
        });
    }
    let len = segment.chars().count();
    if len > MAX_SEGMENT_LEN {
        return Err(CidError::SegmentTooLong {
            level,
            segment: segment.to_string(),
            len,
        });
    }
    for (position, ch) in segment.chars().enumerate() {
        if ch.is_uppercase() {
            return Err(CidError::UpperCase {
                level,
                segment: segment.to_string(),
                ch,
                position,
            });
        }
        if !(ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '-' | '_' | '.')) {
            return Err(CidError::InvalidChar {
                level,
                segment: segment.to_string(),
                ch,
                position,
            });
        }
    }
    if segment == "." || segment == ".." {
        return Err(CidError::DotSegment {
            level,
            segment: segment.to_string(),
        });
    }
    Ok(())
}

/// Turns arbitrary text (a hostname, a NIC name, a MIG profile) into a valid segment:
/// lowercase, other characters mapped to '-', cut to 63 characters.
pub fn sanitize_segment(raw: &str) -> String {
    let mut out: String = raw
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(MAX_SEGMENT_LEN)
        .collect();
    if out.is_empty() || out == "." || out == ".." {
        out = out.replace('.', "-");
        if out.is_empty() {
            out.push('-');
        }
    }
    out
}

/// A parsed, valid compute identifier with 1 to 6 segments.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cid {
    segments: Vec<String>,
}

impl Cid {
    /// Builds a CID from segments, validating each one.
    pub fn from_segments<I, S>(segments: I) -> Result<Self, CidError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let segments: Vec<String> = segments.into_iter().map(Into::into).collect();
        let display = format!("{SCHEME}{}", segments.join("/"));
        if segments.is_empty() {
            return Err(CidError::NoSegments { input: display });
        }
        if segments.len() > Level::ALL.len() {
            return Err(CidError::TooManySegments {
                input: display,
                count: segments.len(),
            });
        }
        for (level, segment) in Level::ALL.iter().zip(&segments) {
            if segment.is_empty() {
                return Err(CidError::EmptySegment {
                    input: display,
                    level: *level,
                });
            }
            validate_segment(*level, segment)?;
        }
        Ok(Cid { segments })
    }

    /// A node CID: provider/region/domain/node.
    pub fn node(provider: &str, region: &str, domain: &str, node: &str) -> Result<Self, CidError> {
        Self::from_segments([provider, region, domain, node])
    }

    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    pub fn depth(&self) -> usize {
        self.segments.len()
    }

    pub fn level(&self) -> Level {
        Level::ALL[self.segments.len() - 1]
    }

    pub fn get(&self, level: Level) -> Option<&str> {
        self.segments.get(level as usize).map(String::as_str)
    }

    pub fn provider(&self) -> &str {
        &self.segments[0]
    }

    pub fn region(&self) -> Option<&str> {
        self.get(Level::Region)
    }

    pub fn domain(&self) -> Option<&str> {
        self.get(Level::Domain)
    }

    pub fn node_name(&self) -> Option<&str> {
        self.get(Level::Node)
    }

    pub fn device(&self) -> Option<&str> {
        self.get(Level::Device)
    }

    /// True when `self` is `other` or an ancestor of it (segment-wise, not string-wise:
    /// `cid:a/b` is not a prefix of `cid:a/bc`).
    pub fn is_prefix_of(&self, other: &Cid) -> bool {
        self.segments.len() <= other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(a, b)| a == b)
    }

    /// This CID cut to `level` (inclusive), or `None` when it is coarser than that.
    pub fn truncate(&self, level: Level) -> Option<Cid> {
        let depth = level as usize + 1;
        (self.segments.len() >= depth).then(|| Cid {
            segments: self.segments[..depth].to_vec(),
        })
    }

    /// The domain-level prefix (provider/region/domain), if this CID is that deep.
    pub fn domain_cid(&self) -> Option<Cid> {
        self.truncate(Level::Domain)
    }

    /// The parent CID, `None` for a provider.
    pub fn parent(&self) -> Option<Cid> {
        (self.segments.len() > 1).then(|| Cid {
            segments: self.segments[..self.segments.len() - 1].to_vec(),
        })
    }

    /// A child CID one level down.
    pub fn child(&self, segment: &str) -> Result<Cid, CidError> {
        let mut segments = self.segments.clone();
        segments.push(segment.to_string());
        Cid::from_segments(segments)
    }

    /// Checks that this CID names exactly a `level` (e.g. a node CID has 4 segments).
    pub fn expect_level(self, level: Level) -> Result<Cid, CidError> {
        if self.level() == level {
            Ok(self)
        } else {
            Err(CidError::WrongDepth {
                cid: self.to_string(),
                expected: level,
                depth: self.depth(),
            })
        }
    }
}

impl fmt::Display for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SCHEME)?;
        for (i, segment) in self.segments.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            f.write_str(segment)?;
        }
        Ok(())
    }
}

impl FromStr for Cid {
    type Err = CidError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let Some(rest) = input.strip_prefix(SCHEME) else {
            return Err(CidError::MissingScheme {
                input: input.to_string(),
            });
        };
        if rest.is_empty() {
            return Err(CidError::NoSegments {
                input: input.to_string(),
            });
        }
        let segments: Vec<&str> = rest.split('/').collect();
        if segments.len() > Level::ALL.len() {
            return Err(CidError::TooManySegments {
                input: input.to_string(),
                count: segments.len(),
            });
        }
        for (level, segment) in Level::ALL.iter().zip(&segments) {
            if segment.is_empty() {
                return Err(CidError::EmptySegment {
                    input: input.to_string(),
                    level: *level,
                });
            }
            validate_segment(*level, segment)?;
        }
        Ok(Cid {
            segments: segments.into_iter().map(str::to_string).collect(),
        })
    }
}

impl Serialize for Cid {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cid {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cid(s: &str) -> Cid {
        s.parse().expect("test CID is valid")
    }

    #[test]
    fn dot_segments_are_refused() {
        for (text, level) in [
            ("cid:acme/./dc-a/n1", "region"),
            ("cid:acme/cn-east-1/dc-a/..", "node"),
        ] {
            let err = text.parse::<Cid>().expect_err("a dot segment is no name");
            assert!(matches!(err, CidError::DotSegment { .. }), "{err}");
            assert!(err.to_string().starts_with(level), "{err}");
        }
        assert_eq!(
            Cid::from_segments(["acme", "..", "x"])
                .expect_err("from segments too")
                .to_string(),
            "region segment \"..\" is not allowed: \".\" and \"..\" mean directories, not names"
        );
        cid("cid:acme/cn-east-1/dc-a/n...1");
        assert_eq!(sanitize_segment(".."), "--");
        assert_eq!(sanitize_segment("."), "-");
    }

    #[test]
    fn long_input_is_quoted_cut_in_errors() {
        let long = format!("cid:acme/{}", "x".repeat(16 * 1024));
        let err = long.parse::<Cid>().expect_err("segment too long");
        let text = err.to_string();
        assert!(text.len() < 200, "{text}");
        assert!(text.contains("… (16384 characters)"), "{text}");
        let no_scheme = "y".repeat(20_000);
        let text = no_scheme.parse::<Cid>().expect_err("no scheme").to_string();
        assert!(
            text.len() < 200 && text.contains("(20000 characters)"),
            "{text}"
        );
    }

    #[test]
    fn parses_and_displays_a_device_cid() {
        let c = cid("cid:acme/cn-east-1/dc-a/gpu-node-017/gpu-3");
        assert_eq!(c.provider(), "acme");
        assert_eq!(c.region(), Some("cn-east-1"));
        assert_eq!(c.domain(), Some("dc-a"));
        assert_eq!(c.node_name(), Some("gpu-node-017"));
        assert_eq!(c.device(), Some("gpu-3"));
        assert_eq!(c.level(), Level::Device);
        assert_eq!(c.to_string(), "cid:acme/cn-east-1/dc-a/gpu-node-017/gpu-3");
        assert_eq!(
            c.domain_cid().map(|d| d.to_string()).as_deref(),
            Some("cid:acme/cn-east-1/dc-a")
        );
    }

    #[test]
    fn mig_and_nic_devices_are_valid() {
        cid("cid:acme/cn-east-1/dc-a/n1/gpu-3/mig-1g.10gb-0");
        cid("cid:acme/cn-east-1/dc-a/n1/nic-mlx5_0");
    }

    #[test]
    fn upper_case_segment_is_rejected_with_position() {
        let err = "cid:acme/cn-east-1/dc-a/Gpu-Node"
            .parse::<Cid>()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "node segment \"Gpu-Node\" has upper-case 'G' at position 0; segments are lowercase"
        );
    }

    #[test]
    fn seventy_character_segment_is_rejected() {
        let long = "a".repeat(70);
        let err = format!("cid:acme/{long}").parse::<Cid>().unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("region segment \"{long}\" is 70 characters long; at most 63")
        );
    }

    #[test]
    fn other_errors_name_the_problem() {
        let cases = [
            (
                "acme/x",
                "compute identifier \"acme/x\" must start with \"cid:\"",
            ),
            (
                "cid:",
                "compute identifier \"cid:\" has no segments after \"cid:\"",
            ),
            ("cid:a//c", "region segment of \"cid:a//c\" is empty"),
            (
                "cid:a/b/c/d/e/f/g",
                "compute identifier \"cid:a/b/c/d/e/f/g\" has 7 segments; at most 6 \
                 (provider/region/domain/node/device/sub-device)",
            ),
            (
                "cid:a/b/c d",
                "domain segment \"c d\" has ' ' at position 1; allowed are a-z, 0-9, '-', '_' and '.'",
            ),
            (
                "cid:a/b/c/gpu+1",
                "node segment \"gpu+1\" has '+' at position 3; allowed are a-z, 0-9, '-', '_' and '.'",
            ),
        ];
        for (input, message) in cases {
            let err = input.parse::<Cid>().unwrap_err();
            assert_eq!(err.to_string(), message, "input {input:?}");
        }
    }

    #[test]
    fn wrong_depth_is_reported() {
        let err = cid("cid:a/b/c").expect_level(Level::Node).unwrap_err();
        assert_eq!(
            err.to_string(),
            "compute identifier cid:a/b/c is not a node identifier (it has 3 segments)"
        );
    }

    #[test]
    fn prefix_is_segment_wise() {
        assert!(cid("cid:a/b").is_prefix_of(&cid("cid:a/b/c")));
        assert!(cid("cid:a/b").is_prefix_of(&cid("cid:a/b")));
        assert!(!cid("cid:a/b").is_prefix_of(&cid("cid:a/bc")));
        assert!(!cid("cid:a/b/c").is_prefix_of(&cid("cid:a/b")));
    }

    #[test]
    fn sanitize_makes_valid_segments() {
        assert_eq!(sanitize_segment("GPU-Node_17.local"), "gpu-node_17.local");
        assert_eq!(sanitize_segment("1g.10gb+me"), "1g.10gb-me");
        assert_eq!(sanitize_segment(""), "-");
        validate_segment(Level::Node, &sanitize_segment(&"X".repeat(100))).expect("valid");
    }

    #[test]
    fn serde_uses_the_text_form() {
        let c = cid("cid:acme/r/d/n");
        let json = serde_json::to_string(&c).expect("serializes");
        assert_eq!(json, "\"cid:acme/r/d/n\"");
        let back: Cid = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, c);
        let err = serde_json::from_str::<Cid>("\"cid:Acme\"").unwrap_err();
        assert!(
            err.to_string()
                .contains("provider segment \"Acme\" has upper-case")
        );
    }

    fn segment() -> impl Strategy<Value = String> {
        "[a-z0-9._-]{1,12}".prop_filter("dot segments are no names", |s| s != "." && s != "..")
    }

    fn any_cid() -> impl Strategy<Value = Cid> {
        prop::collection::vec(segment(), 1..=6)
            .prop_map(|s| Cid::from_segments(s).expect("generated segments are valid"))
    }

    proptest! {
        #[test]
        fn display_parse_round_trips(c in any_cid()) {
            let text = c.to_string();
            let back: Cid = text.parse().expect("displayed CID parses");
            prop_assert_eq!(back, c);
        }

        #[test]
        fn prefix_runs_are_contiguous_in_order(
            p in any_cid(), a in any_cid(), b in any_cid(), x in any_cid()
        ) {
            // A prefix sorts no later than anything under it.
            if p.is_prefix_of(&a) {
                prop_assert!(p <= a);
            }
            // Anything sorted between two CIDs under a prefix is under it too.
            let (lo, hi) = if a <= b { (&a, &b) } else { (&b, &a) };
            if p.is_prefix_of(lo) && p.is_prefix_of(hi) && lo <= &x && &x <= hi {
                prop_assert!(p.is_prefix_of(&x));
            }
        }

        #[test]
        fn truncate_gives_a_prefix(c in any_cid(), depth in 0usize..6) {
            if let Some(t) = c.truncate(Level::ALL[depth]) {
                prop_assert!(t.is_prefix_of(&c));
                prop_assert_eq!(t.depth(), depth + 1);
            }
        }
    }
}
