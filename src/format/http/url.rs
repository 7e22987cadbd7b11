//! URLs the client is given or sent to: a repository's, a proxy's, a status
//! server's, and the `Location` of a redirect.

/// An `http://` or `https://` URL, split for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `https://`: the connection is TLS.
    pub secure: bool,
    /// A name or an address (IPv6 without its brackets).
    pub host: String,
    pub port: u16,
    /// `host[:port]` as given, for the `Host` header.
    pub authority: String,
    /// The path and query (at least `/`), sent as they are: every byte is
    /// printable ASCII, so nothing can end the request line early.
    pub target: String,
}

/// Longest URL taken (a redirect's `Location` included).
pub const MAX_URL: usize = 4096;

impl Url {
    /// Parses `http[s]://host[:port][/path][?query][#fragment]`; the fragment is
    /// dropped (it is never sent). User names in URLs are refused.
    pub fn parse(url: &str) -> Result<Url, String> {
        let shown = || super::printable(url);
        if url.len() > MAX_URL {
            return Err(format!("a URL longer than {MAX_URL} bytes"));
        }
        let (secure, rest) = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (false, rest),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (true, rest),
            _ => {
                return Err(format!("{} must start with http:// or https://", shown()));
            }
        };
        let rest = rest.split('#').next().unwrap_or("");
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(end);
        let (host, port) = split_authority(authority, if secure { 443 } else { 80 })
            .map_err(|why| format!("{}: {why}", shown()))?;
        if !target.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{}: the path holds spaces or bytes that are not ASCII; percent-encode them",
                shown()
            ));
        }
        let target = match target {
            "" => "/".to_string(),
            t if t.starts_with('?') => format!("/{t}"),
            t => t.to_string(),
        };
        Ok(Url {
            secure,
            host,
            port,
            authority: authority.to_string(),
            target,
        })
    }

    /// `scheme://authority`: what a connection is opened to.
    pub fn origin(&self) -> String {
        let scheme = if self.secure { "https" } else { "http" };
        format!("{scheme}://{}", self.authority.to_ascii_lowercase())
    }

    /// The URL a redirect's `location` names, taken relative to this one:
    /// absolute, scheme-relative (`//host/path`), absolute path or relative
    /// path.
    pub fn join(&self, location: &str) -> Result<Url, String> {
        let location = location.trim();
        if location.contains("://") {
            return Url::parse(location);
        }
        if let Some(rest) = location.strip_prefix("//") {
            let scheme = if self.secure { "https" } else { "http" };
            return Url::parse(&format!("{scheme}://{rest}"));
        }
        let path = if location.starts_with('/') {
            location.to_string()
        } else {
            let base = self.target.split('?').next().unwrap_or("/");
            let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
            format!("{dir}{location}")
        };
        Url::parse(&format!("{}{path}", self.origin()))
    }
}

/// `host[:port]` (IPv6 in brackets) as host and port, `default` when none is given.
fn split_authority(authority: &str, default: u16) -> Result<(String, u16), String> {
    if authority.is_empty() {
        return Err("no host".into());
    }
    if authority.contains('@') {
        return Err("user names and passwords in URLs are not supported".into());
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']').ok_or("an unclosed [")?;
            if host.is_empty()
                || !host
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            {
                return Err("a bad IPv6 address".into());
            }
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':').ok_or("a bad port")?)),
            }
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let name = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_';
    if host.is_empty() || !(authority.starts_with('[') || host.bytes().all(name)) {
        return Err("a bad host name".into());
    }
    let port = match port {
        None => default,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|n| *n > 0 && p.bytes().all(|b| b.is_ascii_digit()))
            .ok_or("a bad port")?,
    };
    Ok((host.to_string(), port))
}

/// `http://host[:port][/]` as (host, port); port 80 when not given.
pub fn parse_proxy_url(url: &str) -> Result<(String, u16), String> {
    if !url.starts_with("http://") {
        return Err(format!(
            "proxy {:?} must be an http:// URL",
            super::printable(url)
        ));
    }
    let parsed = Url::parse(url).map_err(|why| format!("proxy {why}"))?;
    if parsed.target != "/" || url.contains(['?', '#']) {
        return Err(format!(
            "proxy {:?} must be http://HOST[:PORT]",
            super::printable(url)
        ));
    }
    Ok((parsed.host, parsed.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_name_a_host_and_port() {
        assert_eq!(
            parse_proxy_url("http://10.0.2.2:3128"),
            Ok(("10.0.2.2".into(), 3128))
        );
        assert_eq!(
            parse_proxy_url("http://squid.lan/"),
            Ok(("squid.lan".into(), 80))
        );
        assert_eq!(
            parse_proxy_url("http://[::1]:8080"),
            Ok(("::1".into(), 8080))
        );
        for bad in [
            "squid:3128",
            "https://p:1",
            "http://",
            "http://u@p:1",
            "http://p:x",
            "http://p/x",
        ] {
            assert!(parse_proxy_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_split_into_what_a_request_needs() {
        let u = Url::parse("https://Repo.Example:8443/images/os?x=1#top").unwrap();
        assert_eq!(
            (u.secure, u.host.as_str(), u.port, u.authority.as_str()),
            (true, "Repo.Example", 8443, "Repo.Example:8443")
        );
        assert_eq!(u.target, "/images/os?x=1");
        assert_eq!(u.origin(), "https://repo.example:8443");
        let u = Url::parse("http://10.0.2.2").unwrap();
        assert_eq!((u.port, u.target.as_str()), (80, "/"));
        assert_eq!(Url::parse("https://h?q").unwrap().target, "/?q");
        let u = Url::parse("http://[fe80::1]/r").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("fe80::1", 80));
        assert_eq!(Url::parse("https://h").unwrap().port, 443);
        for bad in [
            "ftp://h/",
            "h/x",
            "http:///x",
            "http://user:pw@h/",
            "http://h:0/",
            "http://h:99999/",
            "http://h:+80/",
            "http://h x/",
            "http://h/a b",
            "http://h/\r\nX-Injected: 1",
            "http://h/é",
            "http://[::1/",
            "http://[zz]/",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Url::parse(&format!("http://h/{}", "a".repeat(MAX_URL))).is_err());
    }

    #[test]
    fn redirects_resolve_against_the_url_they_answer() {
        let base = Url::parse("https://cdn.example/repo/chunks/ab?sig=1").unwrap();
        let at = |l: &str| base.join(l).map(|u| format!("{}{}", u.origin(), u.target));
        assert_eq!(at("http://other:81/x").unwrap(), "http://other:81/x");
        assert_eq!(at("//mirror/y").unwrap(), "https://mirror/y");
        assert_eq!(at("/z?a").unwrap(), "https://cdn.example/z?a");
        assert_eq!(at("cd").unwrap(), "https://cdn.example/repo/chunks/cd");
        assert!(at("gopher://x/").is_err());
        assert!(at("/a b").is_err());
    }
}
