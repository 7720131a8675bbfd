//! Key-ordered paging over a name-keyed map, shared by `wal list` (segments) and `record list`.

use std::collections::BTreeMap;
use std::ops::Bound;

/// At most `limit` (at least 1) values whose keys start with `prefix` and sort after `after`
/// (from the first when `after` is empty or sorts before `prefix`), in key order, and the token
/// of the next page (the page's last key) only when another matching entry follows: the last
/// page never comes back empty but for an empty listing.
pub fn page<'a, V>(
    map: &'a BTreeMap<String, V>,
    prefix: &str,
    after: &str,
    limit: usize,
) -> (Vec<&'a V>, Option<String>) {
    let limit = limit.max(1);
    let start = if after.is_empty() || after < prefix {
        Bound::Included(prefix.to_string())
    } else {
        Bound::Excluded(after.to_string())
    };
    let mut matching = map.range((start, Bound::Unbounded)).take_while(|(k, _)| k.starts_with(prefix));
    let page: Vec<(&String, &V)> = matching.by_ref().take(limit).collect();
    let next = match (matching.next(), page.last()) {
        (Some(_), Some((last, _))) => Some((*last).clone()),
        _ => None,
    };
    (page.into_iter().map(|(_, v)| v).collect(), next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_the_prefix_and_end_without_a_token() {
        let m: BTreeMap<String, u32> =
            ["a/1", "a/2", "a/3", "b/1"].iter().enumerate().map(|(i, k)| (k.to_string(), i as u32)).collect();
        assert_eq!(page(&m, "a/", "", 2), (vec![&0, &1], Some("a/2".into())));
        assert_eq!(page(&m, "a/", "a/2", 2), (vec![&2], None));
        assert_eq!(page(&m, "a/", "", 3), (vec![&0, &1, &2], None), "no token when nothing follows");
        assert_eq!(page(&m, "b/", "a/9", 0), (vec![&3], None), "an earlier token starts at the prefix; limit 0 is 1");
        assert_eq!(page(&m, "c/", "", 5), (vec![], None));
    }
}
