pytest_plugins = ["netwarden.testing.pytest_plugin"]
