//! Where a less specific route would grant what a more specific one withholds, for `vakt check`.
//!
//! The router lets the most specific route whose pattern matches a path decide, with no fallback
//! on its methods: a method the specific route does not accept is answered 405 even when a `{param}`
//! or `/**` route covering the same path lists it. A policy author who wrote the wildcard route
//! probably believed it applied there. With `path_near_miss: fall_back`, a letter-case or
//! trailing-slash variant of a literal route's path does fall back to the wildcard, which then
//! grants its methods and admits its peers for what an app router ignoring case or a trailing
//! slash serves as the specific route. [`overlap_warnings`] lists each such pair.
//!
//! Routes are compared within one host table: routes naming the same host, or host-less routes.
//! Token conditions are not compared, only methods and peers.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use http::Method;

use super::compile::{Policy, Route};
use super::file::PeerPattern;
use super::router::{NearMiss, PatternSegment};

/// A route as a warning names it: its place in the file, id and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteName {
    pub index: usize,
    pub id: Arc<str>,
    pub path: Arc<str>,
}

impl RouteName {
    fn of(index: usize, route: &Route) -> Self {
        Self {
            index,
            id: route.id.clone(),
            path: route.template.clone(),
        }
    }
}

impl fmt::Display for RouteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "routes[{}] ({}) {}", self.index, self.id, self.path)
    }
}

/// Peers a wildcard route admits that the specific route does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtraPeers {
    /// The wildcard admits every verified peer (public, or a rule without `peers`).
    Any,
    /// These patterns of the wildcard's rules match peers no pattern of the specific route does.
    Listed(Vec<PeerPattern>),
}

impl fmt::Display for ExtraPeers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("every verified peer"),
            Self::Listed(peers) => {
                let names: Vec<String> = peers.iter().map(ToString::to_string).collect();
                f.write_str(&names.join(", "))
            }
        }
    }
}

/// What the wildcard route grants on the specific route's paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Methods the wildcard lists and the specific path accepts on no route.
    Methods(Vec<Method>),
    /// For methods both accept, peers only the wildcard admits (reached through near misses).
    Peers {
        methods: Vec<Method>,
        peers: ExtraPeers,
    },
}

/// A more specific route and a less specific one on the same host whose patterns overlap, where
/// the less specific one grants something the specific one withholds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlapWarning {
    pub host: Option<String>,
    /// The specific routes: for a method grant every route at that path shape (the router
    /// merges them), for a peer grant the one route that handles those methods.
    pub specific: Vec<RouteName>,
    /// The less specific route (`{param}` or `/**` where the specific one is more precise).
    pub wildcard: RouteName,
    pub grant: Grant,
    /// `path_near_miss: fall_back` is set and a letter-case or trailing-slash variant of the
    /// specific paths falls back to the wildcard.
    pub near_miss_falls_back: bool,
}

fn methods_list(methods: &[Method]) -> String {
    methods
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for OverlapWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let specific = self
            .specific
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" and ");
        let host = self
            .host
            .as_deref()
            .map_or(String::new(), |h| format!(" on host {h}"));
        let wildcard = &self.wildcard;
        match &self.grant {
            Grant::Methods(methods) => {
                write!(
                    f,
                    "{wildcard} lists {} but does not apply to the paths of {specific}{host}: there those methods are answered 405 (method_not_allowed); add them to the specific route or narrow the wildcard",
                    methods_list(methods)
                )?;
                if self.near_miss_falls_back {
                    write!(
                        f,
                        "; with path_near_miss: fall_back a near miss (letter case, trailing /) of those paths reaches {} and is granted them",
                        wildcard.id
                    )?;
                }
                Ok(())
            }
            Grant::Peers { methods, peers } => write!(
                f,
                "with path_near_miss: fall_back a near miss (letter case, trailing /) of the paths of {specific}{host} reaches {wildcard}, which admits {peers} for {} where {} does not",
                methods_list(methods),
                self.specific
                    .first()
                    .map_or("the specific route", |s| &*s.id)
            ),
        }
    }
}

/// Every pair of routes on one host where the less specific route grants methods or peers the
/// more specific one withholds on the paths both patterns match.
pub fn overlap_warnings(policy: &Policy) -> Vec<OverlapWarning> {
    let groups = shape_groups(&policy.routes);
    let fall_back = policy.path_near_miss == NearMiss::FallBack;
    let mut warnings = Vec::new();
    for specific in &groups {
        let accepted: Vec<&Method> = specific
            .routes
            .iter()
            .flat_map(|(_, r)| &r.methods)
            .collect();
        for wildcard in &groups {
            if specific.host != wildcard.host
                || compare_specificity(specific.segments, wildcard.segments)
                    != Some(Ordering::Greater)
            {
                continue;
            }
            let falls_back = fall_back && near_miss_reaches(specific.segments, wildcard.segments);
            for &(w_index, w_route) in &wildcard.routes {
                let granted: Vec<Method> = w_route
                    .methods
                    .iter()
                    .filter(|m| !accepts(accepted.iter().copied(), m))
                    .cloned()
                    .collect();
                if !granted.is_empty() {
                    warnings.push(OverlapWarning {
                        host: specific.host.map(str::to_owned),
                        specific: specific
                            .routes
                            .iter()
                            .map(|&(i, r)| RouteName::of(i, r))
                            .collect(),
                        wildcard: RouteName::of(w_index, w_route),
                        grant: Grant::Methods(granted),
                        near_miss_falls_back: falls_back,
                    });
                }
                if !falls_back {
                    continue;
                }
                for &(s_index, s_route) in &specific.routes {
                    let shared: Vec<Method> = w_route
                        .methods
                        .iter()
                        .filter(|m| accepts(s_route.methods.iter(), m))
                        .cloned()
                        .collect();
                    if shared.is_empty() {
                        continue;
                    }
                    if let Some(peers) = extra_peers(w_route, s_route) {
                        warnings.push(OverlapWarning {
                            host: specific.host.map(str::to_owned),
                            specific: vec![RouteName::of(s_index, s_route)],
                            wildcard: RouteName::of(w_index, w_route),
                            grant: Grant::Peers {
                                methods: shared,
                                peers,
                            },
                            near_miss_falls_back: true,
                        });
                    }
                }
            }
        }
    }
    warnings
}

/// Routes with the same host and path shape: one place in the router, methods merged.
struct ShapeGroup<'p> {
    host: Option<&'p str>,
    segments: &'p [PatternSegment],
    routes: Vec<(usize, &'p Route)>,
}

fn shape_groups(routes: &[Route]) -> Vec<ShapeGroup<'_>> {
    let mut groups: Vec<(String, ShapeGroup<'_>)> = Vec::new();
    for (index, route) in routes.iter().enumerate() {
        let shape = route.pattern.shape();
        let host = route.host.as_deref();
        match groups
            .iter_mut()
            .find(|(s, g)| *s == shape && g.host == host)
        {
            Some((_, group)) => group.routes.push((index, route)),
            None => groups.push((
                shape,
                ShapeGroup {
                    host,
                    segments: &route.pattern.segments,
                    routes: vec![(index, route)],
                },
            )),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

/// Is `method` accepted by a route listing `methods`? `HEAD` is authorised as `GET`.
fn accepts<'m>(mut methods: impl Iterator<Item = &'m Method>, method: &Method) -> bool {
    let method = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    methods.any(|m| m == method)
}

/// How two patterns relate where both match some path: `Greater` when `a` is more specific
/// (the router prefers it for every path both match), `Less` when `b` is, `Equal` for the same
/// shape; `None` when no path matches both. At the first segment where they differ in kind, a
/// literal beats a `{param}`, which beats `**`; a pattern that ends beats `**` matching nothing.
pub fn compare_specificity(a: &[PatternSegment], b: &[PatternSegment]) -> Option<Ordering> {
    use PatternSegment::{Literal, Param, Rest};
    match (a.first(), b.first()) {
        (None, None) => Some(Ordering::Equal),
        (None, Some(Rest)) => Some(Ordering::Greater),
        (Some(Rest), None) => Some(Ordering::Less),
        (None, Some(_)) | (Some(_), None) => None,
        (Some(Rest), Some(Rest)) => Some(Ordering::Equal),
        (Some(Rest), Some(_)) => Some(Ordering::Less),
        (Some(_), Some(Rest)) => Some(Ordering::Greater),
        (Some(Literal(x)), Some(Literal(y))) => {
            if x == y {
                compare_specificity(&a[1..], &b[1..])
            } else {
                None
            }
        }
        (Some(Param(_)), Some(Param(_))) => compare_specificity(&a[1..], &b[1..]),
        // A parameter never matches an empty segment (a trailing slash).
        (Some(Literal(x)), Some(Param(_))) if !x.is_empty() => {
            compare_specificity(&a[1..], &b[1..]).map(|_| Ordering::Greater)
        }
        (Some(Param(_)), Some(Literal(y))) if !y.is_empty() => {
            compare_specificity(&a[1..], &b[1..]).map(|_| Ordering::Less)
        }
        (Some(Literal(_)), Some(Param(_))) | (Some(Param(_)), Some(Literal(_))) => None,
    }
}

/// With `fall_back`, does a near miss of a path of `specific` (a literal segment in another
/// letter case, or a trailing `/` added) match `wildcard`? It does where `wildcard` has a
/// `{param}` or `**` at a literal segment of `specific`, or a `**` that takes the extra empty
/// segment.
fn near_miss_reaches(specific: &[PatternSegment], wildcard: &[PatternSegment]) -> bool {
    let rest_from = wildcard
        .iter()
        .position(|s| *s == PatternSegment::Rest)
        .unwrap_or(usize::MAX);
    let case_variant = specific.iter().enumerate().any(|(i, s)| {
        matches!(s, PatternSegment::Literal(l) if !l.is_empty())
            && (i >= rest_from || matches!(wildcard.get(i), Some(PatternSegment::Param(_))))
    });
    let ends_in_rest = specific.last() == Some(&PatternSegment::Rest);
    let slash_variant = !ends_in_rest && rest_from <= specific.len();
    case_variant || slash_variant
}

/// Peers `wildcard` admits that `specific` does not, if any.
fn extra_peers(wildcard: &Route, specific: &Route) -> Option<ExtraPeers> {
    // A specific route that admits every peer withholds none.
    let specific_peers = admitted(specific)?;
    match admitted(wildcard) {
        None => Some(ExtraPeers::Any),
        Some(peers) => {
            let extra: Vec<PeerPattern> = peers
                .into_iter()
                .filter(|w| !specific_peers.iter().any(|s| s.covers(w)))
                .cloned()
                .collect();
            (!extra.is_empty()).then_some(ExtraPeers::Listed(extra))
        }
    }
}

/// The peer patterns a route's rules admit; `None` when it admits every verified peer (a public
/// route, or a rule that names no peers).
fn admitted(route: &Route) -> Option<Vec<&PeerPattern>> {
    if route.public {
        return None;
    }
    let mut peers = Vec::new();
    for rule in &route.rules {
        peers.extend(rule.peers.as_ref()?);
    }
    Some(peers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyContext;
    use crate::policy::router::PathPattern;

    fn segments(p: &str) -> Vec<PatternSegment> {
        PathPattern::parse(p).unwrap().segments
    }

    #[test]
    fn specificity_of_overlapping_patterns() {
        use Ordering::{Equal, Greater, Less};
        for (a, b, expected) in [
            ("/admin", "/{p}", Some(Greater)),
            ("/admin", "/**", Some(Greater)),
            ("/", "/**", Some(Greater)),
            ("/a/b", "/a/**", Some(Greater)),
            ("/a", "/a/**", Some(Greater)),
            ("/a/{x}", "/a/**", Some(Greater)),
            ("/a/{x}/c", "/{y}/b/c", Some(Greater)),
            ("/{p}", "/admin", Some(Less)),
            ("/a/{x}", "/a/{y}", Some(Equal)),
            ("/s/**", "/s/**", Some(Equal)),
            ("/a", "/b", None),
            ("/a", "/{p}/c", None),
            ("/a/b", "/{p}", None),
            ("/a/", "/a/{x}", None),
            ("/a/", "/a/**", Some(Greater)),
            ("/b/**", "/a/**", None),
        ] {
            assert_eq!(
                compare_specificity(&segments(a), &segments(b)),
                expected,
                "{a} vs {b}"
            );
        }
    }

    #[test]
    fn near_misses_that_reach_a_wildcard() {
        for (specific, wildcard, expected) in [
            // /Admin matches {p}; /admin/ does not (a parameter is never empty).
            ("/admin", "/{p}", true),
            ("/admin", "/**", true),
            // Case variants of the literal "a" miss the wildcard's own literal "a"; /a/{x}/ is
            // taken by /a/**.
            ("/a/{x}", "/a/**", true),
            ("/a/{x}", "/{y}/{z}", true),
            // No literal to vary in case, but /1/2/ is taken by the `**`.
            ("/{x}/{y}", "/{x}/{z}/**", true),
            // No literal, and the specific route takes a trailing slash itself.
            ("/{x}/**", "/**", false),
            ("/{p}/x", "/{q}/{r}", true),
            ("/{p}/{q}", "/{r}/**", true),
        ] {
            assert_eq!(
                near_miss_reaches(&segments(specific), &segments(wildcard)),
                expected,
                "{specific} vs {wildcard}"
            );
        }
    }

    fn warnings(yaml: &str) -> Vec<OverlapWarning> {
        let policy = Policy::from_yaml(yaml, &PolicyContext::default()).unwrap();
        overlap_warnings(&policy)
    }

    fn name(index: usize, id: &str, path: &str) -> RouteName {
        RouteName {
            index,
            id: id.into(),
            path: path.into(),
        }
    }

    const ADMIN: &str = "spiffe://td/ns/ops/sa/admin";
    const WEB: &str = "spiffe://td/ns/shop/sa/web";

    #[test]
    fn a_literal_route_under_a_param_route_with_more_methods() {
        let yaml = format!(
            "routes:
  - id: me
    methods: [GET]
    path: /users/me
    allow:
      - peers: [{WEB}]
  - id: user
    methods: [GET, PUT, DELETE]
    path: /users/{{uid}}
    allow:
      - peers: [{WEB}]
"
        );
        assert_eq!(
            warnings(&yaml),
            vec![OverlapWarning {
                host: None,
                specific: vec![name(0, "me", "/users/me")],
                wildcard: name(1, "user", "/users/{uid}"),
                grant: Grant::Methods(vec![Method::DELETE, Method::PUT]),
                near_miss_falls_back: false,
            }]
        );
        // Another route at the same path taking those methods leaves nothing withheld.
        let merged = format!(
            "{yaml}  - id: me-write\n    methods: [PUT, DELETE]\n    path: /users/me\n    allow:\n      - peers: [{WEB}]\n"
        );
        assert_eq!(warnings(&merged), vec![]);
    }

    #[test]
    fn a_catch_all_grants_methods_and_with_fall_back_peers() {
        let yaml = format!(
            "routes:
  - id: admin
    methods: [GET]
    path: /admin
    allow:
      - peers: [{ADMIN}]
  - id: rest
    methods: [GET, HEAD, POST]
    path: /**
    allow:
      - peers: [{WEB}, {ADMIN}]
"
        );
        let methods = OverlapWarning {
            host: None,
            specific: vec![name(0, "admin", "/admin")],
            wildcard: name(1, "rest", "/**"),
            grant: Grant::Methods(vec![Method::POST]),
            near_miss_falls_back: false,
        };
        // Refused near misses: only the methods, answered 405.
        assert_eq!(warnings(&yaml), vec![methods.clone()]);
        let text = methods.to_string();
        assert!(
            text.starts_with("routes[1] (rest) /** lists POST but does not apply to the paths of routes[0] (admin) /admin: there those methods are answered 405 (method_not_allowed)"),
            "{text}"
        );
        // Falling back: /Admin and /admin/ reach the catch-all, which admits web too.
        let fall_back = warnings(&format!("path_near_miss: fall_back\n{yaml}"));
        assert_eq!(
            fall_back,
            vec![
                OverlapWarning {
                    near_miss_falls_back: true,
                    ..methods
                },
                OverlapWarning {
                    host: None,
                    specific: vec![name(0, "admin", "/admin")],
                    wildcard: name(1, "rest", "/**"),
                    grant: Grant::Peers {
                        methods: vec![Method::GET, Method::HEAD],
                        peers: ExtraPeers::Listed(vec![WEB.parse().unwrap()]),
                    },
                    near_miss_falls_back: true,
                },
            ]
        );
        let text = fall_back[1].to_string();
        assert_eq!(
            text,
            format!(
                "with path_near_miss: fall_back a near miss (letter case, trailing /) of the paths of routes[0] (admin) /admin reaches routes[1] (rest) /**, which admits {WEB} for GET, HEAD where admin does not"
            )
        );
    }

    #[test]
    fn a_public_wildcard_admits_every_peer_a_pattern_covers_its_own() {
        let yaml = format!(
            "path_near_miss: fall_back
routes:
  - id: admin
    methods: [GET]
    path: /admin/{{x}}
    allow:
      - peers: [spiffe://td/ns/ops/sa/*]
  - id: ops
    methods: [GET]
    path: /{{area}}/**
    allow:
      - peers: [{ADMIN}]
  - id: open
    methods: [GET]
    path: /**
    public: true
"
        );
        let found = warnings(&yaml);
        // ops admits only a peer admin's pattern covers; open admits everybody on admin's
        // paths. ops itself has no near miss: no literal, and it takes a trailing slash.
        let peers: Vec<(usize, usize, &ExtraPeers)> = found
            .iter()
            .map(|w| match &w.grant {
                Grant::Peers { peers, .. } => (w.specific[0].index, w.wildcard.index, peers),
                Grant::Methods(m) => panic!("unexpected method grant {m:?}"),
            })
            .collect();
        assert_eq!(peers, vec![(0, 2, &ExtraPeers::Any)]);
    }

    #[test]
    fn no_warning_across_hosts_for_identical_grants_or_disjoint_paths() {
        for yaml in [
            // Different hosts: separate tables.
            format!(
                "routes:
  - id: a
    methods: [GET]
    path: /admin
    host: a.svc
    allow:
      - peers: [{ADMIN}]
  - id: b
    methods: [GET, POST]
    path: /**
    host: b.svc
    allow:
      - peers: [{WEB}]
"
            ),
            // Same methods and peers, even when falling back.
            format!(
                "path_near_miss: fall_back
routes:
  - id: a
    methods: [GET, POST]
    path: /users/me
    allow:
      - peers: [{WEB}]
  - id: b
    methods: [GET, POST]
    path: /users/{{uid}}
    allow:
      - peers: [{WEB}]
"
            ),
            // Paths no request matches both of.
            format!(
                "routes:
  - id: a
    methods: [GET]
    path: /a/b
    allow:
      - peers: [{WEB}]
  - id: b
    methods: [POST]
    path: /c/{{x}}
    allow:
      - peers: [{WEB}]
"
            ),
            // The wildcard admits fewer peers and no other method.
            format!(
                "path_near_miss: fall_back
routes:
  - id: a
    methods: [GET]
    path: /a
    public: true
  - id: b
    methods: [GET]
    path: /**
    allow:
      - peers: [{WEB}]
"
            ),
        ] {
            assert_eq!(warnings(&yaml), vec![], "{yaml}");
        }
    }
}
