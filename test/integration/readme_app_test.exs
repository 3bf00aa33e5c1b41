defmodule ClusterSRV.Integration.ReadmeAppTest do
  # The README's promise, kept by nothing but the README: a brand-new app (`mix new --sup`)
  # that takes the README's deps block, its quick start's `{ClusterSRV, service: ...}` child and
  # its rel/env.sh.eex lines, and nothing else, clusters once released and run as a
  # StatefulSet's pods. The snippets are read from README.md (ClusterSRV.Harness.ReadmeApp). The
  # pods get what kubelet gives any pod (a host name, /etc/hosts, a resolv.conf naming the
  # cluster DNS) and no environment of their own, not even RELEASE_COOKIE: the release's own
  # cookie serves, as it does for pods of one image, and the README's config is all it has. Its
  # membership is watched with `bin/myapp rpc` in each pod, as `kubectl exec` would run it,
  # since the app logs none of its own.
  use ExUnit.Case, async: false

  @moduletag :integration
  @moduletag :release
  @moduletag :netns
  @moduletag timeout: 900_000

  alias ClusterSRV.Harness.{Network, NetnsCluster, ReadmeApp}

  setup_all do
    snippets = ReadmeApp.snippets!()
    bin = ReadmeApp.build!(snippets)
    network = Network.start!()

    on_exit(fn ->
      Network.stop(network)
      ReadmeApp.remove(bin)
    end)

    %{snippets: snippets, bin: bin, network: network}
  end

  test "three pods of a StatefulSet of a fresh app set up from the README form a full mesh",
       %{snippets: snippets, bin: bin, network: network} do
    config = snippets.config
    started = System.monotonic_time(:millisecond)

    cluster =
      NetnsCluster.start!(
        network: network,
        service: Keyword.fetch!(config, :service),
        namespace: Keyword.fetch!(config, :namespace),
        app: Keyword.fetch!(config, :application_name),
        release: bin,
        release_env: [],
        membership: :rpc
      )

    try do
      {cluster, _pods} = NetnsCluster.add_pods(cluster, 3)

      case NetnsCluster.await_mesh(cluster, 60_000) do
        {:ok, _ms} ->
          :ok

        {:error, members} ->
          flunk("""
          no full mesh: #{inspect(members)}
          #{NetnsCluster.timeline(cluster, started)}
          """)
      end
    after
      NetnsCluster.stop(cluster)
    end
  end
end
