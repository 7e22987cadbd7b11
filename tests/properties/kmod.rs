use super::*;
use imprint::format::glob::glob_match;
use imprint::format::kmod::*;
use std::collections::BTreeSet;

/// `modules.dep` for modules m0..mN, each depending on the given others.
fn dep_text(deps: &[Vec<usize>]) -> String {
    deps.iter()
        .enumerate()
        .map(|(i, ds)| {
            let ds: Vec<String> = ds.iter().map(|d| format!("kernel/m{d}.ko")).collect();
            format!("kernel/m{i}.ko: {}\n", ds.join(" "))
        })
        .collect()
}

/// A dependency graph of up to 30 modules: acyclic (each depends only on
/// modules before it) or not.
fn graph(acyclic: bool) -> impl Strategy<Value = Vec<Vec<usize>>> {
    (1usize..30).prop_flat_map(move |n| {
        vec(vec(any::<usize>(), 0..4), n).prop_map(move |ds| {
            ds.into_iter()
                .enumerate()
                .map(|(i, d)| {
                    let bound = if acyclic { i } else { n };
                    d.into_iter()
                        .filter(|_| bound > 0)
                        .map(|x| x % bound.max(1))
                        .collect()
                })
                .collect()
        })
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn dependencies_load_first_and_once(
        deps in graph(true),
        wanted in vec(any::<usize>(), 0..8),
    ) {
        let index = ModuleIndex::parse(&dep_text(&deps), "");
        // Some names past the last module: missing.
        let names: Vec<String> =
            wanted.iter().map(|w| format!("m{}", w % (deps.len() + 2))).collect();
        let (order, missing) = index.load_order(names.iter().map(String::as_str));
        let position = |n: &str| order.iter().position(|o| o == n);
        for (i, ds) in deps.iter().enumerate() {
            if let Some(at) = position(&format!("m{i}")) {
                for d in ds {
                    let dep = position(&format!("m{d}"));
                    prop_assert!(dep.is_some_and(|p| p < at), "m{} before m{}", d, i);
                }
            }
        }
        let unique: BTreeSet<&String> = order.iter().collect();
        prop_assert_eq!(unique.len(), order.len());
        for n in &names {
            prop_assert!(order.contains(n) != missing.contains(n));
        }
        // The subset an initramfs carries reads back the same.
        let keep: BTreeSet<String> = order.iter().cloned().collect();
        let again = ModuleIndex::parse(&index.deps_for(&keep), "");
        prop_assert_eq!(again.load_order(names.iter().map(String::as_str)).0, order);
    }

    #[test]
    fn cycles_end(deps in graph(false), wanted in vec(any::<usize>(), 0..8)) {
        let index = ModuleIndex::parse(&dep_text(&deps), "");
        let names: Vec<String> =
            wanted.iter().map(|w| format!("m{}", w % deps.len())).collect();
        let (order, _) = bounded(0, || index.load_order(names.iter().map(String::as_str)));
        let unique: BTreeSet<&String> = order.iter().collect();
        prop_assert_eq!(unique.len(), order.len());
    }

    #[test]
    fn aliases_match_by_glob(
        aliases in vec(("[a-z0-9:*?\\[\\]!-]{0,16}", "[a-z_-]{1,8}"), 0..16),
        modalias in "[a-z0-9:]{0,24}",
    ) {
        let text: String = aliases.iter().map(|(p, n)| format!("alias {p} {n}\n")).collect();
        let index = ModuleIndex::parse("", &text);
        let found = index.lookup(&modalias);
        let mut want: Vec<String> = Vec::new();
        for (p, n) in &aliases {
            let n = n.replace('-', "_");
            let matches = !p.is_empty() && glob_match(p.as_bytes(), modalias.as_bytes());
            if matches && !want.contains(&n) {
                want.push(n);
            }
        }
        prop_assert_eq!(&found, &want);
        let keep: BTreeSet<String> = found.iter().cloned().collect();
        let again = ModuleIndex::parse("", &index.aliases_for(&keep));
        prop_assert_eq!(again.lookup(&modalias), found);
    }

    #[test]
    fn arbitrary_indexes_never_panic(
        dep in ".{0,2000}",
        alias in ".{0,2000}",
        bytes in bytes(),
        query in ".{0,64}",
    ) {
        let lossy = String::from_utf8_lossy(&bytes);
        for (dep, alias) in [(dep.as_str(), alias.as_str()), (&lossy, &lossy)] {
            let index = bounded(dep.len() + alias.len(), || ModuleIndex::parse(dep, alias));
            let _ = index.lookup(&query);
            let names: Vec<String> = dep.split_whitespace().take(50).map(module_name).collect();
            let _ = index.load_order(names.iter().map(String::as_str));
            let _ = index.contains(&query);
            let _ = index.path_of(&query);
        }
    }
}
