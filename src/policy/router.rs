//! The route table: a segment trie per host, matched on the canonical path.
//!
//! Matching is deterministic and independent of file order: at every segment a literal beats a
//! `{param}`, which beats a trailing `**`; the first (most specific) branch that leads to a route
//! accepting the request's method wins, backtracking to less specific branches otherwise. Routes
//! that name a host are tried before host-less ones. Cost is proportional to the number of
//! segments, not the number of routes.

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
    /// Some route matches the path, none the method.
    MethodNotAllowed,
    NoRoute,
}

/// All routes: one trie per named host, and one for routes without a host.
#[derive(Debug, Default)]
pub struct Router {
    by_host: HashMap<String, Node>,
    any_host: Node,
}

/// A route cannot be added because another one already takes its place.
#[derive(Debug)]
pub struct Conflict {
    pub existing: usize,
    pub method: Method,
}

impl Router {
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
        let segments = segment_ranges(path);
        let mut saw_path = false;
        let tries = host
            .and_then(|h| self.by_host.get(h))
            .into_iter()
            .chain(std::iter::once(&self.any_host));
        for root in tries {
            let mut captures = Captures::default();
            if let Some(route) = descend(
                root,
                path,
                &segments,
                0,
                method,
                &mut captures,
                &mut saw_path,
            ) {
                return Lookup::Found { route, captures };
            }
        }
        if saw_path {
            Lookup::MethodNotAllowed
        } else {
            Lookup::NoRoute
        }
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

fn descend(
    node: &Node,
    path: &str,
    segments: &[std::ops::Range<usize>],
    depth: usize,
    method: &Method,
    captures: &mut Captures,
    saw_path: &mut bool,
) -> Option<usize> {
    if depth == segments.len() {
        if !node.here.is_empty() {
            *saw_path = true;
            if let Some(route) = node.here.get(method) {
                return Some(*route);
            }
        }
    } else {
        let range = segments[depth].clone();
        let text = &path[range.clone()];
        if let Some(child) = node.literals.get(text)
            && let Some(route) =
                descend(child, path, segments, depth + 1, method, captures, saw_path)
        {
            return Some(route);
        }
        // A parameter never matches an empty segment (a trailing slash).
        if !text.is_empty()
            && let Some((_, child)) = &node.param
        {
            captures.params.push((depth, range));
            if let Some(route) =
                descend(child, path, segments, depth + 1, method, captures, saw_path)
            {
                return Some(route);
            }
            captures.params.pop();
        }
    }
    if !node.rest.is_empty() {
        *saw_path = true;
        if let Some(route) = node.rest.get(method) {
            return Some(*route);
        }
    }
    None
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
            // Method not on the specific route: the wildcard route for DELETE is used.
            (
                None,
                &Method::DELETE,
                "/patients/42",
                Lookup::Found {
                    route: 8,
                    captures: Captures::default(),
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
            (None, &get, "/patients/42/notes", Lookup::MethodNotAllowed),
            // Only the POST catch-all covers these paths for this router.
            (None, &get, "/healthz/", Lookup::MethodNotAllowed),
            (None, &get, "/patients//journal", Lookup::MethodNotAllowed),
            (None, &Method::PATCH, "/healthz", Lookup::MethodNotAllowed),
        ];
        for (host, method, path, expected) in cases {
            assert_eq!(
                &r.lookup(*host, method, path),
                expected,
                "{method} {path} host {host:?}"
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
