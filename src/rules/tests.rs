//! The rule semantics, case by case (the table in the module docs).

use super::*;
use serde_json::json;

fn rule(v: Value) -> Rule {
    Rule::compile(&v).unwrap_or_else(|e| panic!("{v} should compile: {e}"))
}

fn event() -> Value {
    json!({
        "id": "e-1",
        "topic": "hook.pre_tool",
        "type": "PreToolUse",
        "source": "hook_handler",
        "priority": 2,
        "correlation_id": null,
        "data": {
            "tool": "Bash",
            "file": "/src/lib/main.PNG",
            "ip": "10.0.0.7",
            "ip6": "2001:db8::1",
            "size": 300,
            "ratio": 0.5,
            "tags": ["a", "beta"],
            "empty": "",
            "none": [],
            "items": [{"kind": "x", "n": 1}, {"kind": "y", "n": 2}],
            "nested": {"deep": {"flag": true}}
        }
    })
}

fn yes(v: Value) {
    assert!(rule(v.clone()).matches(&event()), "{v} should match");
}

fn no(v: Value) {
    assert!(!rule(v.clone()).matches(&event()), "{v} should not match");
}

#[test]
fn exact_values_and_and_or() {
    yes(json!({"topic": ["hook.pre_tool"]}));
    yes(json!({"topic": ["x", "hook.pre_tool"]})); // any matcher of the list
    no(json!({"topic": ["hook.pre"]}));
    yes(json!({"topic": ["hook.pre_tool"], "data": {"tool": ["Bash"]}})); // all fields
    no(json!({"topic": ["hook.pre_tool"], "data": {"tool": ["Read"]}}));
    yes(json!({"priority": [2]}));
    yes(json!({"priority": [2.0]})); // numbers by value
    no(json!({"priority": ["2"]})); // a string is not a number
    yes(json!({"correlation_id": [null]}));
    yes(json!({"data": {"empty": [""]}}));
    yes(json!({"data": {"nested": {"deep": {"flag": [true]}}}}));
    no(json!({"data": {"nested": {"deep": {"flag": [false]}}}}));
}

#[test]
fn arrays_match_when_any_element_does() {
    yes(json!({"data": {"tags": ["beta"]}}));
    no(json!({"data": {"tags": ["gamma"]}}));
    yes(json!({"data": {"items": {"kind": ["y"], "n": [2]}}}));
    // Both conditions must hold in the same element.
    no(json!({"data": {"items": {"kind": ["y"], "n": [1]}}}));
}

#[test]
fn prefix_suffix_ignore_case_wildcard() {
    yes(json!({"topic": [{"prefix": "hook."}]}));
    no(json!({"topic": [{"prefix": "system."}]}));
    yes(json!({"data": {"file": [{"suffix": ".PNG"}]}}));
    no(json!({"data": {"file": [{"suffix": ".png"}]}}));
    yes(json!({"data": {"file": [{"suffix": {"equals-ignore-case": ".png"}}]}}));
    yes(json!({"type": [{"prefix": {"equals-ignore-case": "pretool"}}]}));
    yes(json!({"type": [{"equals-ignore-case": "pretooluse"}]}));
    no(json!({"type": [{"equals-ignore-case": "pretool"}]}));
    yes(json!({"data": {"file": [{"wildcard": "/src/*/main.*"}]}}));
    yes(json!({"data": {"file": [{"wildcard": "*lib*"}]}}));
    no(json!({"data": {"file": [{"wildcard": "/src/*/other.*"}]}}));
    no(json!({"priority": [{"prefix": "2"}]})); // string matchers skip numbers
}

#[test]
fn globs() {
    let g = |p: &str| Glob::parse(p, "$").unwrap();
    assert!(g("a*b").matches("ab") && g("a*b").matches("axxb"));
    assert!(!g("a*b").matches("axxbc") && !g("a*b").matches("ba"));
    assert!(g("*").matches("") && g("*").matches("anything"));
    assert!(g("a*a").matches("aa") && !g("a*a").matches("a")); // no overlap
    assert!(g("*ab*ab").matches("xabyab") && !g("*ab*ab").matches("xab"));
    assert!(g("lit").matches("lit") && !g("lit").matches("lite"));
    assert!(g(r"a\*b").matches("a*b") && !g(r"a\*b").matches("axb"));
    let e = Glob::parse("a**b", "$.x").unwrap_err();
    assert!(e.message.contains("consecutive"), "{e}");
}

#[test]
fn anything_but() {
    yes(json!({"data": {"tool": [{"anything-but": "Read"}]}}));
    no(json!({"data": {"tool": [{"anything-but": ["Read", "Bash"]}]}}));
    yes(json!({"priority": [{"anything-but": [1, 3]}]}));
    no(json!({"priority": [{"anything-but": 2}]}));
    yes(json!({"topic": [{"anything-but": {"prefix": "system."}}]}));
    no(json!({"topic": [{"anything-but": {"prefix": "hook."}}]}));
    no(json!({"data": {"file": [{"anything-but": {"suffix": ".PNG"}}]}}));
    no(json!({"type": [{"anything-but": {"equals-ignore-case": ["pretooluse"]}}]}));
    yes(json!({"type": [{"anything-but": {"equals-ignore-case": "x"}}]}));
    no(json!({"data": {"file": [{"anything-but": {"wildcard": "*/lib/*"}}]}}));
    // A field that is absent is not "anything but": it is nothing.
    no(json!({"data": {"missing": [{"anything-but": "x"}]}}));
    // On an array, any element other than the values matches.
    yes(json!({"data": {"tags": [{"anything-but": "a"}]}}));
}

#[test]
fn numeric_ranges() {
    yes(json!({"data": {"size": [{"numeric": [">", 0, "<=", 300]}]}}));
    no(json!({"data": {"size": [{"numeric": [">", 0, "<", 300]}]}}));
    yes(json!({"data": {"size": [{"numeric": ["=", 300]}]}}));
    yes(json!({"data": {"ratio": [{"numeric": [">=", 0.5]}]}}));
    no(json!({"data": {"ratio": [{"numeric": [">", 0.5]}]}}));
    no(json!({"topic": [{"numeric": [">", 0]}]})); // not a number
}

#[test]
fn exists_and_absence() {
    yes(json!({"data": {"tool": [{"exists": true}]}}));
    no(json!({"data": {"tool": [{"exists": false}]}}));
    yes(json!({"data": {"missing": [{"exists": false}]}}));
    no(json!({"data": {"missing": [{"exists": true}]}}));
    yes(json!({"data": {"none": [{"exists": false}]}})); // an empty array has no value
    yes(json!({"correlation_id": [{"exists": true}]})); // null is a value
                                                        // An absent parent: only absence-satisfied rules match.
    yes(json!({"metadata": {"x": [{"exists": false}]}}));
    no(json!({"metadata": {"x": [{"exists": true}]}}));
}

#[test]
fn an_object_where_the_rule_has_matchers_only_exists() {
    yes(json!({"data": {"nested": [{"exists": true}]}}));
    no(json!({"data": {"nested": [{"anything-but": {"prefix": ""}}]}}));
    no(json!({"data": {"nested": [{"anything-but": "x"}]}}));
    no(json!({"data": {"nested": [{"wildcard": "*"}]}}));
}

#[test]
fn cidr_blocks() {
    yes(json!({"data": {"ip": [{"cidr": "10.0.0.0/24"}]}}));
    no(json!({"data": {"ip": [{"cidr": "10.0.1.0/24"}]}}));
    yes(json!({"data": {"ip": [{"cidr": "0.0.0.0/0"}]}}));
    yes(json!({"data": {"ip6": [{"cidr": "2001:db8::/32"}]}}));
    no(json!({"data": {"ip6": [{"cidr": "10.0.0.0/8"}]}})); // families never mix
    no(json!({"data": {"tool": [{"cidr": "10.0.0.0/8"}]}}));
}

#[test]
fn or_groups() {
    yes(json!({"$or": [{"topic": ["nope"]}, {"data": {"tool": ["Bash"]}}]}));
    no(json!({"$or": [{"topic": ["nope"]}, {"data": {"tool": ["Read"]}}]}));
    yes(json!({"data": {"$or": [{"size": [{"numeric": [">", 1000]}]}, {"tool": ["Bash"]}]}}));
    // $or AND a plain field.
    no(json!({"source": ["x"], "$or": [{"topic": ["hook.pre_tool"]}, {"id": ["e-1"]}]}));
}

#[test]
fn invalid_rules_name_the_path() {
    let bad = |v: Value, path: &str, words: &str| {
        let e = Rule::compile(&v).expect_err(&format!("{v} should not compile"));
        assert_eq!(e.path, path, "{v}: {e}");
        assert!(e.message.contains(words), "{v}: {e}");
    };
    bad(json!(["x"]), "$", "JSON object");
    bad(json!({}), "$", "empty object");
    bad(json!({"topic": "hook.x"}), "$.topic", "go in a list");
    bad(json!({"topic": []}), "$.topic", "empty list");
    bad(
        json!({"data": {"tool": [{"contains": "B"}]}}),
        "$.data.tool[0]",
        "unknown operator",
    );
    bad(
        json!({"topic": [{"prefix": 3}]}),
        "$.topic[0].prefix",
        "takes a string",
    );
    bad(
        json!({"topic": [{"prefix": "a", "suffix": "b"}]}),
        "$.topic[0]",
        "exactly one operator",
    );
    bad(
        json!({"n": [{"numeric": [">", "x"]}]}),
        "$.n[0].numeric[1]",
        "expected a number",
    );
    bad(
        json!({"n": [{"numeric": ["~", 1]}]}),
        "$.n[0].numeric[0]",
        "unknown numeric operator",
    );
    bad(
        json!({"n": [{"numeric": [">", 5, "<", 1]}]}),
        "$.n[0].numeric",
        "empty",
    );
    bad(
        json!({"n": [{"numeric": [">", 1, ">", 2]}]}),
        "$.n[0].numeric[2]",
        "two lower",
    );
    bad(
        json!({"n": [{"numeric": ["=", 1, "<", 2]}]}),
        "$.n[0].numeric[0]",
        "stands alone",
    );
    bad(
        json!({"n": [{"exists": "yes"}]}),
        "$.n[0].exists",
        "true or false",
    );
    bad(
        json!({"n": [{"cidr": "10.0.0.0/33"}]}),
        "$.n[0].cidr",
        "CIDR block",
    );
    bad(
        json!({"n": [{"wildcard": "a**"}]}),
        "$.n[0].wildcard",
        "consecutive",
    );
    bad(
        json!({"n": [{"anything-but": []}]}),
        "$.n[0].anything-but",
        "at least one",
    );
    bad(
        json!({"n": [{"anything-but": ["a", 1]}]}),
        "$.n[0].anything-but",
        "only strings",
    );
    bad(
        json!({"n": [{"anything-but": {"numeric": [">", 1]}}]}),
        "$.n[0].anything-but",
        "got \"numeric\"",
    );
    bad(json!({"$or": [{"a": ["x"]}]}), "$[\"$or\"]", "at least two");
    bad(
        json!({"$or": [{"a": ["x"]}, 3]}),
        "$[\"$or\"][1]",
        "rule object",
    );
    bad(json!({"n": [["x"]]}), "$.n[0]", "cannot be a list");
    bad(
        json!({"a b": [{"exists": 1}]}),
        "$[\"a b\"][0].exists",
        "true or false",
    );
}

#[test]
fn rule_sets_say_which_rules_match() {
    let mut set = RuleSet::default();
    assert!(set.is_empty());
    set.add(rule(json!({"topic": [{"prefix": "hook."}]})));
    set.add(rule(json!({"topic": [{"prefix": "system."}]})));
    set.add(rule(json!({"data": {"tool": ["Bash"]}})));
    assert_eq!(set.len(), 3);
    assert_eq!(set.matching(&event()), vec![0, 2]);
    assert!(set.matching(&json!("not an object")).is_empty());
}

/// Random rules and documents over a small vocabulary, so that they often meet.
mod random {
    use super::*;

    const KEYS: [&str; 4] = ["a", "b", "c", "topic"];
    const WORDS: [&str; 6] = ["", "x", "xy", "Xy", "yx", "10.0.0.1"];

    fn scalar(rng: &mut fastrand::Rng) -> Value {
        match rng.u8(0..6) {
            0 => json!(rng.i32(-2..3)),
            1 => json!(rng.i32(-2..3) as f64 / 2.0),
            2 => json!(rng.bool()),
            3 => Value::Null,
            _ => json!(WORDS[rng.usize(0..WORDS.len())]),
        }
    }

    pub fn doc(rng: &mut fastrand::Rng, depth: u32) -> Value {
        let mut m = Map::new();
        for k in KEYS {
            if rng.u8(0..3) == 0 {
                continue;
            }
            let v = match rng.u8(0..6) {
                0 if depth > 0 => doc(rng, depth - 1),
                1 => Value::Array((0..rng.usize(0..3)).map(|_| scalar(rng)).collect()),
                2 if depth > 0 => {
                    Value::Array((0..rng.usize(0..3)).map(|_| doc(rng, depth - 1)).collect())
                }
                _ => scalar(rng),
            };
            m.insert(k.to_string(), v);
        }
        Value::Object(m)
    }

    fn word(rng: &mut fastrand::Rng) -> String {
        WORDS[rng.usize(0..WORDS.len())].to_string()
    }

    fn matcher(rng: &mut fastrand::Rng) -> Value {
        match rng.u8(0..14) {
            0 => json!({"prefix": word(rng)}),
            1 => json!({"suffix": word(rng)}),
            2 => json!({"prefix": {"equals-ignore-case": word(rng)}}),
            3 => json!({"suffix": {"equals-ignore-case": word(rng)}}),
            4 => json!({"equals-ignore-case": word(rng)}),
            5 => {
                let g = ["x*", "*y", "x*y", "*", "xy", "*x*"][rng.usize(0..6)];
                json!({ "wildcard": g })
            }
            6 => json!({"anything-but": [word(rng)]}),
            7 => json!({"anything-but": {"prefix": word(rng)}}),
            8 => json!({"numeric": [">=", rng.i32(-2..2), "<", rng.i32(2..4)]}),
            9 => json!({"exists": rng.bool()}),
            10 => json!({"cidr": "10.0.0.0/24"}),
            11 => json!({"anything-but": rng.i32(-1..2)}),
            _ => scalar(rng),
        }
    }

    pub fn rule(rng: &mut fastrand::Rng, depth: u32) -> Value {
        let mut m = Map::new();
        let n = rng.usize(1..3);
        for _ in 0..n {
            let k = KEYS[rng.usize(0..KEYS.len())];
            let v = if depth > 0 && rng.u8(0..4) == 0 {
                rule(rng, depth - 1)
            } else {
                Value::Array((0..rng.usize(1..3)).map(|_| matcher(rng)).collect())
            };
            m.insert(k.to_string(), v);
        }
        if depth > 0 && rng.u8(0..5) == 0 {
            m.insert(
                "$or".into(),
                Value::Array(vec![rule(rng, depth - 1), rule(rng, depth - 1)]),
            );
        }
        Value::Object(m)
    }
}

#[test]
fn exact_anchors_leave_only_the_rest_to_check() {
    let rules = [
        json!({"data": {"tool": ["Bash"]}}),
        json!({"topic": [{"prefix": "hook."}], "data": {"tool": ["Read", {"prefix": "Ba"}]}}),
        json!({"topic": [{"prefix": "hook."}], "data": {"tool": ["Edit"]}}),
        json!({"data": {"tool": ["Bash"], "size": [{"numeric": [">", 100]}]}}),
        json!({"data": {"tool": [{"equals-ignore-case": "bash"}], "n": [1]}}),
        // NOTE: not exact: a glob with a star, a numeric range, an `$or`.
        json!({"data": {"tool": [{"wildcard": "B*h"}]}}),
        json!({"data": {"size": [{"numeric": [">", 1]}]}}),
        json!({"$or": [{"data": {"tool": ["Bash"]}}, {"topic": ["x"]}]}),
        json!({"topic": [{"prefix": "hook."}], "data": {"tool": ["Write"]}}),
    ];
    let compiled: Vec<Rule> = rules.iter().map(|r| rule(r.clone())).collect();
    let mut set = RuleSet::default();
    for r in &compiled {
        set.add(r.clone());
    }
    assert_eq!(set.exactly_anchored(), 6);
    // NOTE: rules 2 and 8 differ only in their anchor: one shared residual;
    // rule 0 is its anchor alone (an empty residual); rule 1 is anchored on
    // its topic (one anchor, not two).
    assert_eq!(set.distinct_residuals(), 5);
    let docs = [
        json!({"topic": "hook.x", "data": {"tool": "Bash", "size": 300, "n": 1}}),
        json!({"topic": "hook.x", "data": {"tool": ["Read", "BASH"], "size": 3, "n": 1}}),
        json!({"topic": "other", "data": {"tool": "Edit"}}),
        // The same element must hold every field of a nested rule.
        json!({"topic": "hook.x", "data": [{"tool": "Bash"}, {"size": 300}]}),
        json!({"topic": "hook.x", "data": [{"tool": "Bash", "size": 300}]}),
        // An array in an array is no value of the field.
        json!({"topic": "hook.x", "data": {"tool": [["Bash"]], "size": 300}}),
        json!({"topic": "hook.x", "data": {"tool": {"name": "Bash"}}}),
        json!({"topic": "hook.x", "data": "Bash"}),
    ];
    let mut matched = 0;
    for d in &docs {
        let alone: Vec<usize> = compiled
            .iter()
            .enumerate()
            .filter(|(_, r)| r.matches(d))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(set.matching(d), alone, "document {d}");
        matched += alone.len();
    }
    assert_eq!(set.matching(&docs[0]), vec![0, 1, 3, 4, 5, 6, 7]);
    assert_eq!(set.matching(&docs[3]), vec![0, 1, 5, 6, 7]);
    assert_eq!(set.matching(&docs[4]), vec![0, 1, 3, 5, 6, 7]);
    assert_eq!(set.matching(&docs[5]), vec![6]);
    assert!(matched > 10);
}

#[test]
fn the_combined_matcher_matches_what_each_rule_alone_does() {
    let (mut hits, mut checks) = (0usize, 0usize);
    for seed in 0..200u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let rules: Vec<Rule> = (0..40)
            .filter_map(|_| Rule::compile(&random::rule(&mut rng, 2)).ok())
            .collect();
        let mut set = RuleSet::default();
        for r in &rules {
            set.add(r.clone());
        }
        for _ in 0..50 {
            let doc = random::doc(&mut rng, 2);
            let alone: Vec<usize> = rules
                .iter()
                .enumerate()
                .filter(|(_, r)| r.matches(&doc))
                .map(|(i, _)| i)
                .collect();
            assert_eq!(set.matching(&doc), alone, "seed {seed}, document {doc}");
            hits += alone.len();
            checks += rules.len();
        }
    }
    // NOTE: the vocabulary is small enough that rules often match (a test of
    // nothing matching would pass with any matcher).
    assert!(hits * 20 > checks, "{hits} matches in {checks} checks");
}

#[test]
fn most_rules_are_anchored() {
    let mut set = RuleSet::default();
    set.add(rule(json!({"data": {"tool": ["Bash"]}})));
    set.add(rule(
        json!({"topic": [{"prefix": "hook."}], "data": {"n": [{"numeric": [">", 1]}]}}),
    ));
    set.add(rule(
        json!({"$or": [{"a": ["x"]}, {"b": [{"wildcard": "*.png"}]}]}),
    ));
    set.add(rule(json!({"a": [{"exists": false}]})));
    assert_eq!(set.unanchored(), 1);
    assert!(set.names_field("topic") && set.names_field("b") && !set.names_field("c"));
}

#[test]
fn an_event_view_is_matched_as_its_document() {
    use crate::event::EventView;
    let view = EventView {
        id: "e-1".into(),
        topic: "hook.pre_tool".into(),
        event_type: "PreToolUse".into(),
        source: "hook_handler".into(),
        timestamp: chrono::Utc::now(),
        data: Some(json!({"tool": "Bash"})),
        data_error: None,
        correlation_id: None,
        priority: 2,
        meta: Default::default(),
    };
    let r =
        rule(json!({"priority": ["HIGH"], "correlation_id": [null], "data": {"tool": ["Bash"]}}));
    assert!(r.matches_doc(&EventDoc::of(&view, |_| true)));
    // NOTE: fields the rules do not name are left out of the document.
    assert!(!r.matches_doc(&EventDoc::of(&view, |k| k != "data")));
}

#[test]
fn a_payload_cut_to_what_the_rules_read_matches_alike() {
    let mut hits = 0usize;
    for seed in 0..200u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let rules: Vec<Rule> = (0..20)
            .filter_map(|_| Rule::compile(&json!({"data": random::rule(&mut rng, 2)})).ok())
            .collect();
        let Some(p) = Projection::of_field("data", &rules) else {
            continue;
        };
        for _ in 0..30 {
            let data = random::doc(&mut rng, 2);
            let cut = p.project(&data);
            assert_eq!(p.parse(&data.to_string()).unwrap(), cut, "seed {seed}");
            let (whole, cut) = (json!({"data": data}), json!({"data": cut}));
            for r in &rules {
                assert_eq!(r.matches(&whole), r.matches(&cut), "seed {seed}, {whole}");
                hits += r.matches(&whole) as usize;
            }
        }
    }
    assert!(hits > 1000, "{hits} matches");
}
