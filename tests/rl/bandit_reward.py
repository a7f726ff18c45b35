"""A bandit reward for the trainer's sign test: 1 when the completion starts with a space.

About a third of the tiny vocabulary decodes to text starting with a space, so a random policy
earns ~0.35 and a policy trained in the right direction quickly earns more.
"""


def prefer_space(records, completions):
    del records
    return {"overall": [1.0 if c.startswith(" ") else 0.0 for c in completions]}
