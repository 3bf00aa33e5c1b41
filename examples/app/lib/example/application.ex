defmodule Example.Application do
  @moduledoc """
  A minimal release that clusters itself with `ClusterSRV`, without libcluster.

  Its clustering config is read at run time from the environment (see `config/runtime.exs`), and
  it logs the cluster's membership as it changes.
  """
  use Application

  @impl true
  def start(_type, _args) do
    children = [
      {ClusterSRV, Application.fetch_env!(:example, :cluster)},
      Example.Membership
    ]

    Supervisor.start_link(children, strategy: :one_for_one, name: Example.Supervisor)
  end
end
