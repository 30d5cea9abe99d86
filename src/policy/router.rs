//! The route table: a segment trie per host, matched on the canonical path.
//!
//! Matching is deterministic and independent of file order: at every segment a literal beats a
//! `{param}`, which beats a trailing `**`. The most specific route whose pattern matches the path
//! decides: if it does not accept the method, the answer is "method not allowed" with its
//! methods, never a less specific `{param}` or `**` route (which could grant what the specific
//! route withholds). Less specific branches are tried only where no more specific pattern matches
//! the path at all. `HEAD` is matched as `GET`: frameworks run the GET handler for it. Routes that
//! name a host are tried before host-less ones. Cost is proportional to the number of segments,
//! not the number of routes.
//!
//! A path that misses a more specific literal route only by letter case or a trailing `/` (which
//! many app routers ignore) is a near miss: by default it is refused rather than granted by a
//! wildcard route ([`NearMiss`]).

use std::collections::HashMap;
use std::fmt;

use http::Method;

/// One segment of a path pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PatternSegment {
    Literal(String),
    Param(String),
    /// `**`: zero or more remaining segments; only last.
    Rest,
}

/// A parsed path pattern such as `/patients/{pid}/journal` or `/static/**`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    pub segments: Vec<PatternSegment>,
    raw: String,
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl PathPattern {
    /// The names of the `{param}` segments, in order.
    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            PatternSegment::Param(name) => Some(name.as_str()),
            _ => None,
        })
    }

    /// The pattern with parameter names erased: two routes with the same shape can never both
    /// be selected for one request and method.
    pub fn shape(&self) -> String {
        self.segments
            .iter()
            .map(|s| match s {
                PatternSegment::Literal(l) => format!("/{l}"),
                PatternSegment::Param(_) => "/{}".to_owned(),
                PatternSegment::Rest => "/**".to_owned(),
            })
            .collect()
    }

    pub fn parse(raw: &str) -> Result<Self, String> {
        let Some(rest) = raw.strip_prefix('/') else {
            return Err("must start with '/'".into());
        };
        if raw == "/" {
            return Ok(Self {
                segments: Vec::new(),
                raw: raw.into(),
            });
        }
        let parts: Vec<&str> = rest.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        let mut names: Vec<&str> = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let segment = if *part == "**" {
                if !last {
                    return Err("'**' may only be the last segment".into());
                }
                PatternSegment::Rest
            } else if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(format!(
                        "parameter {part} must be {{name}} with letters, digits or '_'"
                    ));
                }
                if names.contains(&name) {
                    return Err(format!("parameter {{{name}}} appears twice"));
                }
                names.push(name);
                PatternSegment::Param(name.to_owned())
            } else {
                if part.is_empty() && !last {
                    return Err("empty segment ('//')".into());
                }
                if *part == "." || *part == ".." {
                    return Err("dot segments never match a canonical path".into());
                }
                if part.contains(['{', '}', '*', '%', ';', '\\', '?', '#']) {
                    return Err(format!(
                        "segment {part:?} mixes literal text with '{{', '}}', '*', or holds '%', ';', '\\\\', '?', '#'"
                    ));
                }
                if !part.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(format!("segment {part:?} must be visible ASCII"));
                }
                PatternSegment::Literal((*part).to_owned())
            };
            segments.push(segment);
        }
        Ok(Self {
            segments,
            raw: raw.into(),
        })
    }
}

/// Path parameters captured by a match, as byte ranges of the canonical path.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Captures {
    pub params: Vec<(usize, std::ops::Range<usize>)>,
}

#[derive(Debug, Default)]
struct Node {
    literals: HashMap<String, Node>,
    param: Option<(String, Box<Node>)>,
    /// Routes ending here, by method (route indices).
    here: HashMap<Method, usize>,
    /// Routes ending in `**` below this node.
    rest: HashMap<Method, usize>,
}

/// Outcome of a lookup.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    Found {
        route: usize,
        captures: Captures,
    },
    /// The most specific route matching the path does not accept the method; `allowed` are the
    /// methods it does accept (for `Allow`), sorted, `HEAD` with `GET`.
    MethodNotAllowed {
        allowed: Vec<Method>,
    },
    /// The path differs from a more specific literal route only by case or a trailing `/`.
    NearMiss,
    NoRoute,
}

/// What a path that nearly matches a more specific route gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NearMiss {
    /// Refused (`path_near_miss`): an app router that ignores case or a trailing slash would
    /// serve the specific route's handler under a wildcard route's permissions.
    #[default]
    Refuse,
    /// Matched like any other path (wildcard routes apply); for apps whose routers are exact.
    FallBack,
}

/// All routes: one trie per named host, and one for routes without a host.
#[derive(Debug, Default)]
pub struct Router {
    by_host: HashMap<String, Node>,
    any_host: Node,
    near_miss: NearMiss,
}

/// Where a descent ended.
enum Step<'a> {
    Found(usize),
    /// A route's pattern matches the path but not the method: these are its methods.
    Covered(&'a HashMap<Method, usize>),
    NearMiss,
    Miss,
}

/// A route cannot be added because another one already takes its place.
#[derive(Debug)]
pub struct Conflict {
    pub existing: usize,
    pub method: Method,
}

impl Router {
    pub fn new(near_miss: NearMiss) -> Self {
        Self {
            near_miss,
            ..Self::default()
        }
    }

    /// Add route `index`. Errors when a route with the same host, shape and method exists.
    pub fn insert(
        &mut self,
        host: Option<&str>,
        pattern: &PathPattern,
        methods: &[Method],
        index: usize,
    ) -> Result<(), Conflict> {
        let mut node = match host {
            Some(h) => self.by_host.entry(h.to_owned()).or_default(),
            None => &mut self.any_host,
        };
        let mut rest = false;
        for segment in &pattern.segments {
            node = match segment {
                PatternSegment::Literal(l) => node.literals.entry(l.clone()).or_default(),
                PatternSegment::Param(name) => {
                    &mut node
                        .param
                        .get_or_insert_with(|| (name.clone(), Box::default()))
                        .1
                }
                PatternSegment::Rest => {
                    rest = true;
                    break;
                }
            };
        }
        let table = if rest { &mut node.rest } else { &mut node.here };
        for method in methods {
            if let Some(existing) = table.get(method) {
                return Err(Conflict {
                    existing: *existing,
                    method: method.clone(),
                });
            }
        }
        for method in methods {
            table.insert(method.clone(), index);
        }
        Ok(())
    }

    /// Find the route for `method` on `host` and canonical `path`.
    pub fn lookup(&self, host: Option<&str>, method: &Method, path: &str) -> Lookup {
        let method = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        let segments = segment_ranges(path);
        let tries = host
            .and_then(|h| self.by_host.get(h))
            .into_iter()
            .chain(std::iter::once(&self.any_host));
        for root in tries {
            let mut captures = Captures::default();
            let walk = Walk {
                path,
                segments: &segments,
                method,
                near_miss: self.near_miss,
            };
            match walk.descend(root, 0, &mut captures) {
                Step::Found(route) => return Lookup::Found { route, captures },
                Step::Covered(table) => {
                    let mut allowed: Vec<Method> = table.keys().cloned().collect();
                    if table.contains_key(&Method::GET) {
                        allowed.push(Method::HEAD);
                    }
                    allowed.sort_by(|a, b| a.as_str().cmp(b.as_str()));
                    return Lookup::MethodNotAllowed { allowed };
                }
                Step::NearMiss => return Lookup::NearMiss,
                Step::Miss => {}
            }
        }
        Lookup::NoRoute
    }
}

/// Byte ranges of the segments of a canonical path (`/` has none; a trailing `/` yields a last,
/// empty segment).
fn segment_ranges(path: &str) -> Vec<std::ops::Range<usize>> {
    if path == "/" {
        return Vec::new();
    }
    let mut ranges = Vec::with_capacity(8);
    let mut start = 1;
    for (i, b) in path.bytes().enumerate().skip(1) {
        if b == b'/' {
            ranges.push(start..i);
            start = i + 1;
        }
    }
    ranges.push(start..path.len());
    ranges
}

/// One lookup's request: what every level of the descent compares against.
struct Walk<'p> {
    path: &'p str,
    segments: &'p [std::ops::Range<usize>],
    method: &'p Method,
    near_miss: NearMiss,
}

impl Walk<'_> {
    /// The most specific match below `node` for the segments from `depth` on.
    fn descend<'n>(&self, node: &'n Node, depth: usize, captures: &mut Captures) -> Step<'n> {
        if depth == self.segments.len() {
            if !node.here.is_empty() {
                return self.pick(&node.here);
            }
        } else {
            let range = self.segments[depth].clone();
            let text = &self.path[range.clone()];
            if let Some(child) = node.literals.get(text) {
                match self.descend(child, depth + 1, captures) {
                    Step::Miss => {}
                    decided => return decided,
                }
            }
            if self.near_miss == NearMiss::Refuse && self.is_near_miss(node, depth, text) {
                return Step::NearMiss;
            }
            // A parameter never matches an empty segment (a trailing slash).
            if !text.is_empty()
                && let Some((_, child)) = &node.param
            {
                captures.params.push((depth, range));
                match self.descend(child, depth + 1, captures) {
                    Step::Miss => {
                        captures.params.pop();
                    }
                    decided => return decided,
                }
            }
        }
        if !node.rest.is_empty() {
            return self.pick(&node.rest);
        }
        Step::Miss
    }

    fn pick<'n>(&self, table: &'n HashMap<Method, usize>) -> Step<'n> {
        match table.get(self.method) {
            Some(route) => Step::Found(*route),
            None => Step::Covered(table),
        }
    }

    /// Would the path match a more specific literal route but for letter case at this segment,
    /// or but for a trailing `/` here?
    fn is_near_miss(&self, node: &Node, depth: usize, text: &str) -> bool {
        if text.is_empty() && depth + 1 == self.segments.len() && !node.here.is_empty() {
            return true;
        }
        node.literals.iter().any(|(literal, child)| {
            literal != text
                && literal.eq_ignore_ascii_case(text)
                && !matches!(
                    self.descend(child, depth + 1, &mut Captures::default()),
                    Step::Miss
                )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(routes: &[(&str, Option<&str>, &[&str])]) -> Router {
        let mut r = Router::default();
        for (i, (pattern, host, methods)) in routes.iter().enumerate() {
            let methods: Vec<Method> = methods.iter().map(|m| m.parse().unwrap()).collect();
            r.insert(*host, &PathPattern::parse(pattern).unwrap(), &methods, i)
                .unwrap();
        }
        r
    }

    #[test]
    fn most_specific_wins_regardless_of_order() {
        let routes: &[(&str, Option<&str>, &[&str])] = &[
            ("/static/**", None, &["GET"]),
            ("/patients/{pid}/journal", None, &["GET"]),
            ("/patients/me/journal", None, &["GET"]),
            ("/patients/{pid}", None, &["GET", "PUT"]),
            ("/healthz", None, &["GET"]),
            ("/", None, &["GET"]),
            ("/**", None, &["POST"]),
            ("/healthz", Some("admin.svc"), &["GET"]),
            ("/patients/**", None, &["DELETE"]),
        ];
        let r = router(routes);
        let get = Method::GET;
        let cases: &[(Option<&str>, &Method, &str, Lookup)] = &[
            (
                None,
                &get,
                "/healthz",
                Lookup::Found {
                    route: 4,
                    captures: Captures::default(),
                },
            ),
            (
                Some("admin.svc"),
                &get,
                "/healthz",
                Lookup::Found {
                    route: 7,
                    captures: Captures::default(),
                },
            ),
            (
                Some("other"),
                &get,
                "/healthz",
                Lookup::Found {
                    route: 4,
                    captures: Captures::default(),
                },
            ),
            (
                None,
                &get,
                "/",
                Lookup::Found {
                    route: 5,
                    captures: Captures::default(),
                },
            ),
            (
                None,
                &get,
                "/patients/me/journal",
                Lookup::Found {
                    route: 2,
                    captures: Captures::default(),
                },
            ),
            (
                None,
                &get,
                "/patients/42/journal",
                Lookup::Found {
                    route: 1,
                    captures: Captures {
                        params: vec![(1, 10..12)],
                    },
                },
            ),
            (
                None,
                &get,
                "/patients/42",
                Lookup::Found {
                    route: 3,
                    captures: Captures {
                        params: vec![(1, 10..12)],
                    },
                },
            ),
            (
                None,
                &Method::PUT,
                "/patients/42",
                Lookup::Found {
                    route: 3,
                    captures: Captures {
                        params: vec![(1, 10..12)],
                    },
                },
            ),
            // Method not on the most specific route: 405 with its methods, never the DELETE
            // wildcard, which would grant what the specific route withholds.
            (
                None,
                &Method::DELETE,
                "/patients/42",
                Lookup::MethodNotAllowed {
                    allowed: vec![Method::GET, Method::HEAD, Method::PUT],
                },
            ),
            // HEAD is matched as GET.
            (
                None,
                &Method::HEAD,
                "/patients/42",
                Lookup::Found {
                    route: 3,
                    captures: Captures {
                        params: vec![(1, 10..12)],
                    },
                },
            ),
            (
                None,
                &get,
                "/static/a/b/c.css",
                Lookup::Found {
                    route: 0,
                    captures: Captures::default(),
                },
            ),
            (
                None,
                &get,
                "/static",
                Lookup::Found {
                    route: 0,
                    captures: Captures::default(),
                },
            ),
            (
                None,
                &Method::POST,
                "/anything/at/all",
                Lookup::Found {
                    route: 6,
                    captures: Captures::default(),
                },
            ),
            // Only the DELETE wildcard covers this path: the path exists, the method does not.
            (
                None,
                &get,
                "/patients/42/notes",
                Lookup::MethodNotAllowed {
                    allowed: vec![Method::DELETE],
                },
            ),
            (
                None,
                &get,
                "/patients//journal",
                Lookup::MethodNotAllowed {
                    allowed: vec![Method::DELETE],
                },
            ),
            (
                None,
                &Method::PATCH,
                "/healthz",
                Lookup::MethodNotAllowed {
                    allowed: vec![Method::GET, Method::HEAD],
                },
            ),
            // Near misses of `/healthz` (case, trailing slash) are not left to the POST catch-all.
            (None, &get, "/healthz/", Lookup::NearMiss),
            (None, &Method::POST, "/healthz/", Lookup::NearMiss),
            (None, &Method::POST, "/HealthZ", Lookup::NearMiss),
            (None, &get, "/Patients/me/journal", Lookup::NearMiss),
            // Also where a `{param}` route matches too: a case-insensitive app router would run
            // the `/patients/me/journal` handler under the `{pid}` route's permissions.
            (None, &get, "/patients/ME/journal", Lookup::NearMiss),
            // A segment no literal route nearly matches is an ordinary parameter.
            (
                None,
                &get,
                "/patients/MX/journal",
                Lookup::Found {
                    route: 1,
                    captures: Captures {
                        params: vec![(1, 10..12)],
                    },
                },
            ),
        ];
        for (host, method, path, expected) in cases {
            assert_eq!(
                &r.lookup(*host, method, path),
                expected,
                "{method} {path} host {host:?}"
            );
        }
    }

    /// With `path_near_miss: fall_back` a near miss is matched like any other path.
    #[test]
    fn near_misses_fall_back_when_configured() {
        let mut r = Router::new(NearMiss::FallBack);
        for (i, (pattern, methods)) in [("/admin", &[Method::GET][..]), ("/**", &[Method::GET][..])]
            .into_iter()
            .enumerate()
        {
            r.insert(None, &PathPattern::parse(pattern).unwrap(), methods, i)
                .unwrap();
        }
        for path in ["/Admin", "/admin/"] {
            assert_eq!(
                r.lookup(None, &Method::GET, path),
                Lookup::Found {
                    route: 1,
                    captures: Captures::default()
                },
                "{path}"
            );
        }
    }

    #[test]
    fn conflicts_and_bad_patterns_are_refused() {
        let mut r = Router::default();
        let get = [Method::GET];
        r.insert(None, &PathPattern::parse("/a/{x}").unwrap(), &get, 0)
            .unwrap();
        let conflict = r
            .insert(None, &PathPattern::parse("/a/{y}").unwrap(), &get, 1)
            .unwrap_err();
        assert_eq!(conflict.existing, 0);
        // Same shape, other method, or other host: fine.
        r.insert(
            None,
            &PathPattern::parse("/a/{y}").unwrap(),
            &[Method::POST],
            2,
        )
        .unwrap();
        r.insert(Some("h"), &PathPattern::parse("/a/{y}").unwrap(), &get, 3)
            .unwrap();
        for bad in [
            "a", "/a/**/b", "/{}", "/{a}/{a}", "/a//b", "/a/../b", "/a%2Fb", "/a;b", "/x{y}",
            "/a b",
        ] {
            assert!(PathPattern::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(PathPattern::parse("/a/{x}/**").unwrap().shape(), "/a/{}/**");
    }
}
