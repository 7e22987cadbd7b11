use super::*;
use imprint::format::glob::*;

/// A plainly recursive matcher for the same syntax, to compare against.
fn reference(p: &[u8], t: &[u8]) -> bool {
    enum Token {
        Star,
        Any,
        Byte(u8),
        Class(Vec<(u8, u8)>, bool),
        /// An unclosed `[`: matches nothing.
        Never,
    }
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            b'*' => tokens.push(Token::Star),
            b'?' => tokens.push(Token::Any),
            b'[' => {
                let mut j = i + 1;
                let negate = matches!(p.get(j), Some(b'!' | b'^'));
                if negate {
                    j += 1;
                }
                let mut ranges = Vec::new();
                let mut closed = None;
                let mut first = true;
                while j < p.len() {
                    if p[j] == b']' && !first {
                        closed = Some(j);
                        break;
                    }
                    first = false;
                    if j + 2 < p.len() && p[j + 1] == b'-' && p[j + 2] != b']' {
                        ranges.push((p[j], p[j + 2]));
                        j += 3;
                    } else {
                        ranges.push((p[j], p[j]));
                        j += 1;
                    }
                }
                match closed {
                    Some(end) => {
                        tokens.push(Token::Class(ranges, negate));
                        i = end;
                    }
                    None => {
                        tokens.push(Token::Never);
                        break;
                    }
                }
            }
            c => tokens.push(Token::Byte(c)),
        }
        i += 1;
    }
    fn go(
        tokens: &[Token],
        t: &[u8],
        memo: &mut Vec<Vec<Option<bool>>>,
        i: usize,
        j: usize,
    ) -> bool {
        if let Some(known) = memo[i][j] {
            return known;
        }
        let one = |ok: bool| ok && j < t.len();
        let result = match tokens.get(i) {
            None => j == t.len(),
            Some(Token::Star) => {
                go(tokens, t, memo, i + 1, j) || (j < t.len() && go(tokens, t, memo, i, j + 1))
            }
            Some(Token::Any) => one(true) && go(tokens, t, memo, i + 1, j + 1),
            Some(Token::Byte(c)) => one(t.get(j) == Some(c)) && go(tokens, t, memo, i + 1, j + 1),
            Some(Token::Class(ranges, negate)) => {
                one(t
                    .get(j)
                    .is_some_and(|c| ranges.iter().any(|(a, b)| (a..=b).contains(&c)) != *negate))
                    && go(tokens, t, memo, i + 1, j + 1)
            }
            Some(Token::Never) => false,
        };
        memo[i][j] = Some(result);
        result
    }
    let mut memo = vec![vec![None; t.len() + 1]; tokens.len() + 1];
    go(&tokens, t, &mut memo, 0, 0)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn matches_like_the_reference(
        pattern in "[ab*?\\[\\]!^-]{0,14}",
        text in "[ab\\]!-]{0,14}",
    ) {
        let (p, t) = (pattern.as_bytes(), text.as_bytes());
        prop_assert_eq!(glob_match(p, t), reference(p, t));
    }

    #[test]
    fn arbitrary_patterns_never_panic(
        pattern in vec(any::<u8>(), 0..300),
        text in vec(any::<u8>(), 0..300),
    ) {
        let _ = bounded(0, || glob_match(&pattern, &text));
        let (p, t) = (String::from_utf8_lossy(&pattern), String::from_utf8_lossy(&text));
        let _ = glob_match_path(&p, &t);
    }

    #[test]
    fn path_globs_never_cross_a_slash(
        pattern in "(/[a-z*?]{1,4}){1,4}",
        path in "(/[a-z]{0,4}){1,5}",
    ) {
        if glob_match_path(&pattern, &path) {
            prop_assert_eq!(pattern.matches('/').count(), path.matches('/').count());
        }
    }

    #[test]
    fn migration_lists_never_panic(text in ".{0,400}", path in ".{0,40}") {
        if let Ok(list) = imprint::migrate::parse_list(&text) {
            let _ = imprint::migrate::accepts(&list, &path);
        }
    }
}
