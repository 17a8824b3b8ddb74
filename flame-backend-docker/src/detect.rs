//! Small pure helpers: finding this process's own container id, reading the runner's
//! `FLAME_READY <url>` line, naming containers, and splitting image references.

/// Ids (or id prefixes) under which this process's own container may be known to dockerd,
/// most specific first: 64-hex ids found in `/proc/self/cgroup` and `/proc/self/mountinfo`,
/// then the hostname (Docker's default hostname is the short container id) when the process
/// looks containerised (`/.dockerenv`, or an id was found).
pub(crate) fn own_container_candidates() -> Vec<String> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let dockerenv = std::path::Path::new("/.dockerenv").exists();
    candidates_from(&cgroup, &mountinfo, hostname.trim(), dockerenv)
}

pub(crate) fn candidates_from(cgroup: &str, mountinfo: &str, hostname: &str, dockerenv: bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let push = |out: &mut Vec<String>, id: String| {
        if !out.contains(&id) {
            out.push(id);
        }
    };
    for line in cgroup.lines() {
        for id in hex64_runs(line) {
            push(&mut out, id);
        }
    }
    // cgroup v2 shows `0::/`; the container's own files are mounted from
    // /var/lib/docker/containers/<id>/{hostname,hosts,resolv.conf}.
    for line in mountinfo.lines().filter(|l| l.contains("/containers/")) {
        for id in hex64_runs(line) {
            push(&mut out, id);
        }
    }
    let found_ids = !out.is_empty();
    if (dockerenv || found_ids) && !hostname.is_empty() {
        push(&mut out, hostname.to_owned());
    }
    out
}

/// Runs of exactly 64 hexadecimal characters (container ids) in `text`.
fn hex64_runs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut start = None;
    for i in 0..=bytes.len() {
        let hex = i < bytes.len() && bytes[i].is_ascii_hexdigit();
        match (hex, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                if i - s == 64 {
                    out.push(text[s..i].to_ascii_lowercase());
                }
                start = None;
            }
            _ => {}
        }
    }
    out
}

/// The URL of a `FLAME_READY <url>` line, if `line` is one.
pub(crate) fn ready_url(line: &str) -> Option<&str> {
    let rest = line.trim().strip_prefix("FLAME_READY")?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let url = rest.split_whitespace().next()?;
    (url.starts_with("http://") || url.starts_with("https://")).then_some(url)
}

/// Host and port of an `http(s)://host:port[/...]` URL (brackets of an IPv6 host removed).
pub(crate) fn host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit('@').next()?;
    let default_port = if scheme == "https" { 443 } else { 80 };
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, tail) = v6.split_once(']')?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default_port,
        };
        return Some((host.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_owned(), port.parse().ok()?)),
        None => Some((authority.to_owned(), default_port)),
    }
}

/// A valid Docker container name (`[a-zA-Z0-9][a-zA-Z0-9_.-]+`) for `runner_id` of `app`.
pub(crate) fn container_name(app: &str, runner_id: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    let mut app = clean(app);
    app.truncate(40);
    let mut id = clean(runner_id);
    id.truncate(64);
    format!("flame-{app}-{id}")
}

/// Splits an image reference into `(name, tag)` the way `docker pull` does: a digest stays
/// in the name with no tag, a missing tag is `latest`.
pub(crate) fn split_image(image: &str) -> (String, String) {
    if image.contains('@') {
        return (image.to_owned(), String::new());
    }
    let last_segment_start = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_segment_start..].rfind(':') {
        Some(i) => {
            let at = last_segment_start + i;
            (image[..at].to_owned(), image[at + 1..].to_owned())
        }
        None => (image.to_owned(), "latest".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f6b2a1c9d8e7f60a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718";

    #[test]
    fn cgroup_v1_ids_come_first_then_hostname() {
        let cgroup = format!("12:memory:/docker/{ID}\n0::/\n");
        let c = candidates_from(&cgroup, "", "4f6b2a1c9d8e", false);
        assert_eq!(c, vec![ID.to_owned(), "4f6b2a1c9d8e".to_owned()]);
    }

    #[test]
    fn cgroup_v2_falls_back_to_mountinfo() {
        let mountinfo = format!(
            "612 590 254:0 /var/lib/docker/containers/{ID}/hostname /etc/hostname rw - ext4 /dev/vda rw\n\
             613 590 254:0 /var/lib/docker /var/lib/docker rw - ext4 /dev/vda rw"
        );
        let c = candidates_from("0::/\n", &mountinfo, "web-1", true);
        assert_eq!(c, vec![ID.to_owned(), "web-1".to_owned()]);
    }

    #[test]
    fn a_plain_host_has_no_candidates() {
        assert!(candidates_from("0::/\n", "1 2 3:4 / / rw - ext4 x rw", "laptop", false).is_empty());
        assert_eq!(candidates_from("0::/", "", "vm", true), vec!["vm".to_owned()]);
    }

    #[test]
    fn ready_lines() {
        assert_eq!(
            ready_url("FLAME_READY http://127.0.0.1:4100\n"),
            Some("http://127.0.0.1:4100")
        );
        assert_eq!(
            ready_url("  FLAME_READY   http://[::1]:9 extra"),
            Some("http://[::1]:9")
        );
        assert_eq!(ready_url("FLAME_READYhttp://x:1"), None);
        assert_eq!(ready_url("log: FLAME_READY http://x:1"), None);
        assert_eq!(ready_url("FLAME_READY not-a-url"), None);
    }

    #[test]
    fn host_and_port() {
        assert_eq!(
            host_port("http://127.0.0.1:4100"),
            Some(("127.0.0.1".into(), 4100))
        );
        assert_eq!(
            host_port("http://[fdaa::3]:8080/x"),
            Some(("fdaa::3".into(), 8080))
        );
        assert_eq!(host_port("http://runner"), Some(("runner".into(), 80)));
        assert_eq!(host_port("http://h:notaport"), None);
    }

    #[test]
    fn names_are_valid() {
        assert_eq!(container_name("my app", "r/1"), "flame-my-app-r-1");
    }

    #[test]
    fn image_refs() {
        assert_eq!(split_image("alpine"), ("alpine".into(), "latest".into()));
        assert_eq!(
            split_image("localhost:5000/a/b:1.2"),
            ("localhost:5000/a/b".into(), "1.2".into())
        );
        assert_eq!(
            split_image("localhost:5000/a"),
            ("localhost:5000/a".into(), "latest".into())
        );
        assert_eq!(
            split_image("a@sha256:abc"),
            ("a@sha256:abc".into(), String::new())
        );
    }
}
