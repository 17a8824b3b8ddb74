//! Identifier case conversion for the generated names and default ids.

/// `MathService` → `math_service`, `HTTPServer` → `http_server`, `get_user` → `get_user`,
/// `getUser` → `get_user`.
pub(crate) fn snake(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c == '_' {
            if !out.ends_with('_') {
                out.push('_');
            }
            continue;
        }
        if c.is_uppercase() {
            let prev = i.checked_sub(1).and_then(|p| chars.get(p));
            let next = chars.get(i + 1);
            let boundary = match prev {
                Some(p) if p.is_lowercase() || p.is_ascii_digit() => true,
                Some(p) if p.is_uppercase() => next.is_some_and(|n| n.is_lowercase()),
                _ => false,
            };
            if boundary && !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// `add` → `ADD`, `getUser` → `GET_USER`.
pub(crate) fn screaming(name: &str) -> String {
    snake(name).to_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case() {
        assert_eq!(snake("Math"), "math");
        assert_eq!(snake("MathService"), "math_service");
        assert_eq!(snake("HTTPServer"), "http_server");
        assert_eq!(snake("ImageV2Resize"), "image_v2_resize");
        assert_eq!(snake("Decorated"), "decorated");
        assert_eq!(snake("get_user"), "get_user");
        assert_eq!(snake("getUser"), "get_user");
        assert_eq!(snake("a__b"), "a_b");
    }

    #[test]
    fn screaming_case() {
        assert_eq!(screaming("add"), "ADD");
        assert_eq!(screaming("get_user"), "GET_USER");
        assert_eq!(screaming("getUser"), "GET_USER");
    }
}
