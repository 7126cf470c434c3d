"""The domain model every other part shares: session context, VR rules, UIDs, errors, the
``ros2:`` Retrieve URL and the stream kinds and states. Pure Python, no I/O."""
