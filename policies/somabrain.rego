# SomaBrain's default policy set. Entry point: data.somabrain.policy.decision.
#
# Input (built by the node from each request; POST /constitution/validate takes it as given):
#   action        "remember", "evaluate"; for reads and changes of stored memories
#                 "recall", "get", "link", "forget" (decided per namespace, size 0)
#   tenant        the tenant the request acts for
#   namespace     the memory namespace ("default" when a remember names none); "" for a read
#                 that names none (an evaluate over all namespaces): the namespace rules are
#                 then left out, since the node decides each namespace the read finds
#                 separately (as the request made in it) and leaves out the refused ones
#   tags          the memory's tags (remember) or the request's tags
#   scopes        the caller's token scopes
#   content_size  bytes of content (remember) or of the query (evaluate)
# Data: data.constitution.{version, checksum, policy, articles}, where policy is the signed
# constitution's "policy" object (policies/data.json is the default one).
#
# The decision:
#   allow       true when deny is empty
#   deny        the reasons for refusing the request (HTTP 403 with these as the explanation)
#   penalties   tag -> weight in [0, 1]: the memory is kept but weighs less in bundles
#   tags        labels for the bundle and the audit event
#   directives  instructions for the agent, carried in the bundle
#
# Why one rule: regorus charges a few microseconds for every rule it evaluates, and a
# decision is taken on every remember and evaluate. Computed in a single body, the whole
# decision costs about a third of the same checks spread over a dozen rules (measured by
# benchmarks/policy.py). Each check is one comprehension below; add yours the same way.
package somabrain.policy

import rego.v1

decision := {
	"allow": count(deny) == 0,
	"deny": deny,
	"penalties": penalties,
	"tags": tags,
	"directives": directives,
} if {
	policy := data.constitution.policy

	# Namespace rules of this tenant: policy.namespaces.tenants[tenant], else the default.
	ns := object.get(policy.namespaces.tenants, input.tenant, policy.namespaces["default"])

	# Content limit: per action ("default" otherwise), overridden per tenant.
	sizes := object.union(
		policy.limits.max_content_bytes,
		object.get(policy.limits.tenants, input.tenant, {}),
	)
	max_bytes := object.get(sizes, input.action, sizes["default"])
	admin := policy.scopes.admin in input.scopes

	deny := union({
		# Tenant allowlist ("*" admits every tenant) ...
		{sprintf("tenant %q is not on the tenant allowlist", [input.tenant]) |
			not_listed(input.tenant, policy.tenants.allow)
		},

		# ... and denylist, which wins over "*".
		{sprintf("tenant %q is denied by the constitution", [input.tenant]) |
			input.tenant in policy.tenants.deny
		},

		# Namespaces open to this tenant.
		{sprintf("namespace %q is not open to tenant %q", [input.namespace, input.tenant]) |
			input.namespace != ""
			not_listed(input.namespace, ns.allow)
		},

		# Reserved namespaces (by prefix) need the admin scope.
		{sprintf("namespace %q is reserved (prefix %q): it needs the %q scope", [input.namespace, p, policy.scopes.admin]) |
			not admin
			some p in ns.reserved_prefixes
			startswith(input.namespace, p)
		},

		# Blocked tags.
		{sprintf("tag %q is blocked by the constitution", [t]) |
			some t in input.tags
			t in policy.tags.blocked
		},

		# Content size.
		{sprintf("content of %d bytes exceeds the %d-byte limit for %s", [input.content_size, max_bytes, input.action]) |
			input.content_size > max_bytes
		},

		# Number of tags.
		{sprintf("%d tags exceed the limit of %d", [count(input.tags), policy.limits.max_tags]) |
			count(input.tags) > policy.limits.max_tags
		},

		# Scopes an action requires.
		{sprintf("%s needs the %q scope", [input.action, s]) |
			s := policy.scopes.required[input.action]
			not s in input.scopes
		},
	})

	# Sensitive tags: a penalty per tag, a "sensitive" label and the sensitive directives.
	penalties := {t: w | some t in input.tags; w := policy.tags.sensitive[t]}
	tags := {"sensitive" | count(penalties) > 0} | {sprintf("sensitive:%s", [t]) | some t, _ in penalties}
	directives := {d | some d in policy.directives.always} | {d |
		count(penalties) > 0
		some d in policy.directives.sensitive
	}
}

# x is not in list, and list does not admit everything with "*".
not_listed(x, list) if {
	not "*" in list
	not x in list
}
