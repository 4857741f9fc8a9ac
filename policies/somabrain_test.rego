# Tests of the default policy set, run by pytest (tests/governance/test_rego_policies.py runs
# every test_ rule of every *_test.rego here, with data.json as data.constitution.policy).
package somabrain.policy_test

import rego.v1

import data.somabrain.policy

ok := {
	"action": "remember",
	"tenant": "acme",
	"namespace": "default",
	"tags": [],
	"scopes": [],
	"content_size": 100,
}

decide(overrides) := d if {
	d := policy.decision with input as object.union(ok, overrides)
}

test_plain_request_is_allowed if {
	d := decide({})
	d.allow
	count(d.deny) == 0
	count(d.penalties) == 0
}

test_tenant_not_on_allowlist_is_denied if {
	d := policy.decision with input as ok
		with data.constitution.policy.tenants.allow as ["other"]
	not d.allow
	d.deny == {"tenant \"acme\" is not on the tenant allowlist"}
}

test_denylist_wins_over_wildcard if {
	d := policy.decision with input as ok
		with data.constitution.policy.tenants.deny as ["acme"]
	not d.allow
	"tenant \"acme\" is denied by the constitution" in d.deny
}

test_per_tenant_namespaces if {
	rules := {"acme": {"allow": ["notes"], "reserved_prefixes": []}}
	notes := policy.decision with input as object.union(ok, {"namespace": "notes"})
		with data.constitution.policy.namespaces.tenants as rules
	notes.allow
	other := policy.decision with input as ok
		with data.constitution.policy.namespaces.tenants as rules
	other.deny == {"namespace \"default\" is not open to tenant \"acme\""}
}

test_a_read_naming_no_namespace_is_decided_without_the_namespace_rules if {
	rules := {"acme": {"allow": ["notes"], "reserved_prefixes": ["_"]}}
	unscoped := {"action": "evaluate", "namespace": ""}
	d := policy.decision with input as object.union(ok, unscoped)
		with data.constitution.policy.namespaces.tenants as rules
	d.allow

	# the other rules still apply
	big := object.union(ok, object.union(unscoped, {"content_size": 20000}))
	too_big := policy.decision with input as big
		with data.constitution.policy.namespaces.tenants as rules
	too_big.deny == {"content of 20000 bytes exceeds the 16384-byte limit for evaluate"}
}

test_reserved_namespace_needs_admin if {
	d := decide({"namespace": "_system"})
	not d.allow
	d.deny == {"namespace \"_system\" is reserved (prefix \"_\"): it needs the \"admin\" scope"}
	decide({"namespace": "_system", "scopes": ["admin"]}).allow
}

test_blocked_tag_is_denied if {
	d := decide({"tags": ["notes", "malware"]})
	not d.allow
	d.deny == {"tag \"malware\" is blocked by the constitution"}
}

test_content_size_limit_per_action if {
	decide({"content_size": 262144}).allow
	big := decide({"content_size": 262145})
	big.deny == {"content of 262145 bytes exceeds the 262144-byte limit for remember"}
	not decide({"action": "evaluate", "content_size": 20000}).allow
	decide({"action": "recall", "content_size": 20000}).allow # "default": 1 MiB
}

test_tenant_size_override if {
	d := policy.decision with input as object.union(ok, {"content_size": 5000})
		with data.constitution.policy.limits.tenants as {"acme": {"remember": 4096}}
	not d.allow
}

test_too_many_tags if {
	tags := [sprintf("t%d", [i]) | some i in numbers.range(1, 65)]
	d := decide({"tags": tags})
	d.deny == {"65 tags exceed the limit of 64"}
}

test_required_scope if {
	d := policy.decision with input as ok
		with data.constitution.policy.scopes.required as {"remember": "memory:write"}
	d.deny == {"remember needs the \"memory:write\" scope"}
	e := policy.decision with input as object.union(ok, {"scopes": ["memory:write"]})
		with data.constitution.policy.scopes.required as {"remember": "memory:write"}
	e.allow
}

test_sensitive_tags_are_penalized_not_denied if {
	d := decide({"tags": ["pii", "secret", "notes"]})
	d.allow
	d.penalties == {"pii": 0.35, "secret": 0.5}
	d.tags == {"sensitive", "sensitive:pii", "sensitive:secret"}
	count(d.directives) == 1
}

test_every_reason_is_reported if {
	d := decide({"namespace": "_x", "tags": ["malware"], "content_size": 1000000})
	count(d.deny) == 3
}
