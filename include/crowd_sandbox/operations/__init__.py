"""The sandbox's MTurk operations, one module per group of MTurk's API reference: HITs,
assignments (with bonuses, messages and the balance), qualifications, worker blocks,
notifications (and the messages they send), and the worker actions the worker site performs.
Each group is a mixin over ``core.SandboxCore``; ``requester.Sandbox`` composes them."""
