import Config

# Defaults for running the app outside a cluster; config/runtime.exs sets the release's.
config :example, :cluster,
  service: "example-headless",
  namespace: "default",
  application_name: "example"

config :logger, :console, format: "$time [$level] $message\n"
