defmodule ClusterSRV.Integration.ReleaseTest do
  # The path users take: libcluster_srv as a dependency of their own app, shipped as a release.
  # Apps are built in temporary directories; cargo's cache is shared, so only our crate builds.
  use ExUnit.Case, async: false

  @moduletag :integration
  @moduletag :release
  @moduletag timeout: 600_000

  alias ClusterSRV.Harness.{DNS, Watchdog, Zone}

  @root Path.expand("../..", __DIR__)
  @cargo_target Path.join(@root, "_build/cluster_srv_cargo")
  @service Zone.service("example-headless", "default",
             pods: for(i <- 0..2, do: {"example-#{i}", {127, 0, 0, 10 + i}})
           )

  setup_all do
    dns = DNS.start!(services: [@service])

    on_exit(fn ->
      DNS.stop(dns)

      case :persistent_term.get({__MODULE__, :release}, nil) do
        nil -> :ok
        bin -> File.rm_rf(bin |> Path.dirname() |> Path.join("../../..") |> Path.expand())
      end

      :persistent_term.erase({__MODULE__, :release})
    end)

    %{dns: dns}
  end

  defp mix(args, dir, env) do
    env = [{"CARGO_TARGET_DIR", @cargo_target}, {"MIX_ENV", "dev"} | env]
    System.cmd("mix", args, cd: dir, env: env, stderr_to_stdout: true)
  end

  # A copy of the shared cargo cache, for a build of another checkout of the crate: cdylib
  # outputs carry no hash, so two sources of one crate in one target dir overwrite each other's
  # library while cargo still finds each of them fresh.
  defp private_cargo_target! do
    dir = Watchdog.tmp_dir("cluster_srv_cargo")
    File.rm_rf!(dir)
    {_, 0} = System.cmd("cp", ["-a", @cargo_target, dir])
    dir
  end

  defp mix!(args, dir, env) do
    case mix(args, dir, env) do
      {output, 0} -> output
      {output, status} -> flunk("mix #{Enum.join(args, " ")} failed (#{status}):\n#{output}")
    end
  end

  # A fresh app that depends on us and does nothing but look up SRV records.
  defp consumer_app!(dep) do
    dir = Watchdog.tmp_dir("cluster_srv_consumer")
    File.mkdir_p!(Path.join(dir, "lib"))

    File.write!(Path.join(dir, "mix.exs"), """
    defmodule Consumer.MixProject do
      use Mix.Project
      def project, do: [app: :consumer, version: "0.1.0", elixir: "~> 1.14", deps: [#{dep}]]
      def application, do: [extra_applications: [:logger]]
    end
    """)

    File.write!(Path.join(dir, "lib/consumer.ex"), """
    defmodule Consumer do
      def targets(nameserver, name) do
        {:ok, resolver} = ClusterSRV.Resolver.new(nameservers: [nameserver])
        {:ok, records} = ClusterSRV.Resolver.lookup(resolver, name)
        Enum.map(records, & &1.target)
      end
    end
    """)

    dir
  end

  defp expected_targets,
    do: for(pod <- @service.pods, do: Zone.target(@service, pod))

  defp run_lookup!(dir, env, dns) do
    code =
      "IO.puts(Enum.join(Consumer.targets(#{inspect(DNS.nameserver(dns))}, " <>
        "#{inspect(Zone.service_name(@service))}), \",\"))"

    output = mix!(["run", "-e", code], dir, env)
    assert output =~ Enum.join(expected_targets(), ","), output
  end

  describe "as a dependency" do
    test "a path dependency builds the NIF in test and prod, and again after deps.clean",
         %{dns: dns} do
      dir = consumer_app!(~s({:libcluster_srv, path: #{inspect(@root)}}))

      try do
        for env <- ["test", "prod"] do
          output = mix!(["compile"], dir, [{"MIX_ENV", env}])
          assert output =~ "Compiling the cluster_srv NIF", output

          assert File.regular?(
                   Path.join(dir, "_build/#{env}/lib/libcluster_srv/priv/native/cluster_srv.so")
                 )

          run_lookup!(dir, [{"MIX_ENV", env}], dns)
        end

        mix!(["deps.clean", "libcluster_srv"], dir, [{"MIX_ENV", "prod"}])
        refute File.exists?(Path.join(dir, "_build/prod/lib/libcluster_srv"))
        mix!(["compile"], dir, [{"MIX_ENV", "prod"}])
        run_lookup!(dir, [{"MIX_ENV", "prod"}], dns)
      after
        File.rm_rf(dir)
      end
    end

    test "a git dependency builds and loads the NIF", %{dns: dns} do
      dir =
        consumer_app!(~s({:libcluster_srv, git: #{inspect("file://" <> @root)}, branch: "main"}))

      target = private_cargo_target!()
      env = [{"MIX_ENV", "prod"}, {"CARGO_TARGET_DIR", target}]

      try do
        mix!(["deps.get"], dir, [])
        mix!(["compile"], dir, env)
        run_lookup!(dir, env, dns)
      after
        File.rm_rf(dir)
        File.rm_rf(target)
      end
    end
  end

  describe "examples/app as a release" do
    setup do
      %{bin: release_bin!()}
    end

    test "carries the NIF: bin/example eval looks up SRV records", %{bin: bin, dns: dns} do
      code = """
      {:ok, r} = ClusterSRV.Resolver.new(nameservers: [#{inspect(DNS.nameserver(dns))}])
      {:ok, records} = ClusterSRV.Resolver.lookup(r, #{inspect(Zone.service_name(@service))})
            IO.puts(Enum.map_join(records, ",", & &1.target))
      """

      {output, 0} = System.cmd(bin, ["eval", code], stderr_to_stdout: true)
      assert output =~ Enum.join(expected_targets(), ","), output
    end

    test "three pods started from the release form a full mesh", %{bin: bin, dns: dns} do
      inetrc = DNS.write_inetrc!(dns, Path.join(Watchdog.tmp_dir("cluster_srv_inetrc"), "inetrc"))

      pods =
        for {label, {a, b, c, d} = ip} <- @service.pods do
          host = Zone.target(@service, {label, ip})

          env = [
            {"NODE_HOST", host},
            {"RELEASE_COOKIE", "release-test"},
            {"ERL_INETRC", inetrc},
            {"ERL_AFLAGS",
             "-start_epmd false -erl_epmd_port 4370 -kernel inet_dist_use_interface {#{a},#{b},#{c},#{d}}"},
            {"CLUSTER_NAMESERVERS", DNS.nameserver(dns)},
            {"CLUSTER_POLLING_INTERVAL", "1000"}
          ]

          {:"example@#{host}", Watchdog.open(bin, ["start"], env: env)}
        end

      try do
        names = MapSet.new(pods, &elem(&1, 0))

        members =
          await_members(
            Map.new(pods, fn {name, port} -> {port, {name, MapSet.new()}} end),
            names,
            30_000
          )

        for {_port, {name, seen}} <- members do
          assert seen == names, "#{name} sees #{inspect(MapSet.to_list(seen))}"
        end

        # The README's way to run the check inside a pod, where there is no Mix. The rpc
        # client node listens on the shared distribution port too, so on an address of its own.
        [{label, ip} | _] = @service.pods
        host = Zone.target(@service, {label, ip})

        check =
          "Mix.Tasks.ClusterSrv.Check.run(~w(--service example-headless --namespace default " <>
            "--application-name example --nameserver #{DNS.nameserver(dns)}))"

        {output, status} =
          System.cmd(bin, ["rpc", check],
            env: [
              {"NODE_HOST", host},
              {"RELEASE_COOKIE", "release-test"},
              {"ERL_INETRC", inetrc},
              {"ERL_AFLAGS",
               "-start_epmd false -erl_epmd_port 4370 -kernel inet_dist_use_interface {127,0,0,250}"}
            ],
            stderr_to_stdout: true
          )

        assert status == 0, output
        assert output =~ "Node names the strategy would connect to (3)", output
        assert output =~ ~s(✓ :"example@#{host}"), output
        refute output =~ "✗", output
      after
        Enum.each(pods, fn {_, port} -> Watchdog.close(port) end)
      end
    end
  end

  # One release for the tests that need it, built on first use.
  defp release_bin! do
    case :persistent_term.get({__MODULE__, :release}, nil) do
      nil ->
        build = Watchdog.tmp_dir("cluster_srv_release")
        app = Path.join(@root, "examples/app")

        output =
          mix!(["release", "--overwrite"], app, [{"MIX_ENV", "prod"}, {"MIX_BUILD_PATH", build}])

        assert output =~ "Release created"
        bin = Path.join(build, "rel/example/bin/example")
        :persistent_term.put({__MODULE__, :release}, bin)
        bin

      bin ->
        bin
    end
  end

  # Reads each pod's "[example] cluster: ..." lines until every pod sees all of `names`.
  defp await_members(members, names, timeout) do
    if Enum.all?(members, fn {_, {_, seen}} -> seen == names end) do
      members
    else
      receive do
        {port, {:data, {_, line}}} when is_map_key(members, port) ->
          members =
            case Regex.run(~r/\[example\] cluster: (.*)$/, line) do
              [_, list] ->
                {name, _} = members[port]
                seen = list |> String.split(", ") |> Enum.map(&String.to_atom/1) |> MapSet.new()
                Map.put(members, port, {name, seen})

              nil ->
                members
            end

          await_members(members, names, timeout)

        {port, {:exit_status, status}} when is_map_key(members, port) ->
          flunk("a release pod exited with status #{status}")
      after
        timeout -> flunk("no full mesh: #{inspect(members)}")
      end
    end
  end
end
