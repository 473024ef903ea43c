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
