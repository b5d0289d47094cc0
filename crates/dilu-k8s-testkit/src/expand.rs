//! `$(VAR)` references in a container's command, args and env values, expanded as the kubelet does
//! (Kubernetes' `third_party/forked/golang/expansion`): `$(NAME)` becomes the variable's value, a name not
//! defined stays as written (`$(NAME)`), `$$` is a literal `$`, and any other `$` is kept.

/// Expands `input` with `lookup`.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let mut chars = after.chars();
        match chars.next() {
            // A trailing `$` stays.
            None => {
                out.push('$');
                rest = after;
            }
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('(') => match after.find(')') {
                Some(close) => {
                    let name = &after[1..close];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[close + 1..];
                }
                // An unclosed reference stays as written.
                None => {
                    out.push_str("$(");
                    rest = &after[1..];
                }
            },
            Some(c) => {
                out.push('$');
                out.push(c);
                rest = chars.as_str();
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::expand;

    fn env(name: &str) -> Option<String> {
        match name {
            "POD_IP" => Some("127.0.1.1".into()),
            "EMPTY" => Some(String::new()),
            "A" => Some("$(B)".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_like_the_kubelet() {
        let cases = [
            ("--bind $(POD_IP) 8080", "--bind 127.0.1.1 8080"),
            ("$(POD_IP)$(POD_IP)", "127.0.1.1127.0.1.1"),
            ("$(UNKNOWN)", "$(UNKNOWN)"),
            ("x$(EMPTY)y", "xy"),
            ("$$(POD_IP)", "$(POD_IP)"),
            ("$$$(POD_IP)", "$127.0.1.1"),
            ("$$$$", "$$"),
            ("$", "$"),
            ("a$", "a$"),
            ("$HOME", "$HOME"),
            ("$(POD_IP", "$(POD_IP"),
            ("$()", "$()"),
            ("$(A)", "$(B)"),
            ("é$(POD_IP)é", "é127.0.1.1é"),
            ("$é", "$é"),
            ("plain", "plain"),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, env), want, "input {input:?}");
        }
    }
}
