defmodule ClusterSRV.Harness.NetnsCase do
  @moduledoc """
  The case template of the tests that run pods in the namespace cluster: one cluster network
  (`ClusterSRV.Harness.Network`) per test module, shared by its tests, and the helpers they all
  use. Each test starts clusters of its own service on that network with `cluster!/3`, which
  stops them when the test ends.

      defmodule MyNetnsTest do
        use ClusterSRV.Harness.NetnsCase, interval: 500

        test "three pods mesh", %{network: network} do
          {cluster, _pods} = NetnsCluster.add_pods(cluster!(network, "web"), 3)
          assert_mesh(cluster, 10 * @interval, now())
        end
      end

  `interval` (default 1,000 ms) is the pods' polling interval, also set as `@interval`; `app`
  names every cluster's app (by default each is named after its service). The module gets the
  tags `:integration`, `:e2e` and `:netns`.
  """

  use ExUnit.CaseTemplate

  alias ClusterSRV.Harness.{NetnsCluster, Network}

  using opts do
    interval = Keyword.get(opts, :interval, 1_000)
    defaults = [polling_interval: interval] ++ Keyword.take(opts, [:app])

    quote do
      import ClusterSRV.Harness.NetnsCase

      @moduletag :integration
      @moduletag :e2e
      @moduletag :netns

      @interval unquote(interval)

      # A cluster of `service` on the module's network, polling every @interval, its app
      # named after the service unless `opts` (or the template's `app`) say otherwise.
      defp cluster!(network, service, opts \\ []),
        do: start_cluster!(network, service, Keyword.merge(unquote(defaults), opts))
    end
  end

  setup_all do
    network = Network.start!()
    on_exit(fn -> Network.stop(network) end)
    %{network: network}
  end

  @doc """
  Starts a cluster of `service` on `network` (`ClusterSRV.Harness.NetnsCluster.start!/1`,
  with `app: service` unless `opts` name another) and stops it when the test ends.
  """
  def start_cluster!(network, service, opts) do
    cluster =
      NetnsCluster.start!(Keyword.merge([network: network, service: service, app: service], opts))

    on_exit(fn -> NetnsCluster.stop(cluster) end)
    cluster
  end

  @doc "The monotonic time in ms, as the pods' reports stamp their events."
  def now, do: System.monotonic_time(:millisecond)

  @doc """
  Waits for every pod of `cluster` to hold every other: returns how long it took, or fails with
  the members each pod held and the cluster's timeline since `since`.
  """
  def assert_mesh(cluster, within, since) do
    case NetnsCluster.await_mesh(cluster, within) do
      {:ok, ms} ->
        ms

      {:error, members} ->
        flunk(
          "no full mesh within #{within} ms: #{inspect(members)}\n" <>
            NetnsCluster.timeline(cluster, since)
        )
    end
  end

  @doc "Waits until `fun` holds, trying every 20 ms: `false` at `deadline` (monotonic ms)."
  def eventually(fun, deadline) do
    cond do
      fun.() -> true
      now() >= deadline -> false
      true -> Process.sleep(20) && eventually(fun, deadline)
    end
  end
end
