defmodule ClusterSRV.ResolverTest do
  use ExUnit.Case, async: true
  doctest ClusterSRV.Resolver

  alias ClusterSRV.Resolver

  describe "internal helpers the strategy uses" do
    test "node_names/2 keeps valid targets under the domain, once each, and says why not" do
      record = &%ClusterSRV.Record{priority: 0, weight: 50, port: &2, ttl: 5, target: &1}
      target = "myapp-0.myapp-headless.default.svc.cluster.local"

      assert Resolver.node_names(
               [
                 record.(target, 4370),
                 record.(target, 4369),
                 record.("my_app.example.com", 4370)
               ],
               application_name: "myapp",
               domain: "myapp-headless.default.svc.cluster.local"
             ) ==
               {:ok,
                %{
                  nodes: [:"myapp@#{target}"],
                  rejected: [{"my_app.example.com", :invalid_hostname}]
                }}
    end

    test "address_names/3 names addresses, capped, leaving out unspecified ones" do
      assert Resolver.address_names([{10, 1, 0, 5}, {0xFD00, 0, 0, 0, 0, 0, 0, 1}], "app", 1) ==
               %{nodes: [:"app@10.1.0.5"], rejected: [{"fd00::1", :over_max_nodes}]}

      assert Resolver.address_names([{0, 0, 0, 0}, {10, 1, 0, 6}], "app", 10) ==
               %{nodes: [:"app@10.1.0.6"], rejected: [{"0.0.0.0", :unspecified_address}]}
    end

    test "deadline/2 and reply_timeout/2: timeout x attempts + 100 ms, twice when filling" do
      resolver = %Resolver{ref: nil, nameservers: [], timeout: 500, attempts: 3}
      assert Resolver.deadline(resolver) == 1_600
      assert Resolver.deadline(resolver, fill_addresses: true) == 3_200
      assert Resolver.deadline(timeout: 500, attempts: 3) == 1_600
      assert Resolver.reply_timeout(timeout: 500, attempts: 3) == 2_600
    end
  end

  describe "new/1" do
    test "builds a resolver with the defaults filled in" do
      assert {:ok, resolver} = Resolver.new(nameservers: ["127.0.0.1:5353"])
      assert %Resolver{timeout: 2_000, attempts: 2, nameservers: ["127.0.0.1:5353"]} = resolver

      assert inspect(resolver) =~
               "#ClusterSRV.Resolver<servers: [\"127.0.0.1:5353\"] (nameservers)"
    end

    test "accepts every nameserver form, IPv6 included" do
      forms = [
        "10.0.0.10",
        "127.0.0.1:5353",
        "[::1]:5353",
        "::1",
        {"::1", 53},
        {{0, 0, 0, 0, 0, 0, 0, 1}, 53}
      ]

      assert {:ok, _} = Resolver.new(nameservers: forms)
    end

    test "without nameservers it asks the servers the VM resolves with (and sends nothing yet)" do
      :inet_db.res_update_conf()

      vm_servers =
        for {ip, port} <-
              :inet_db.res_option(:nameservers) ++ :inet_db.res_option(:alt_nameservers),
            uniq: true,
            do: "#{:inet.ntoa(ip)}:#{port}"

      assert {:ok, %Resolver{nameservers: [], source: source, servers: servers}} = Resolver.new()

      if vm_servers == [] do
        assert source == :resolv_conf
      else
        assert {source, servers} == {:vm, vm_servers}
      end
    end

    test "current/1 looks at resolv.conf only when the resolver reads it" do
      # In a VM of its own, whose resolver settings (global to a VM) it changes; the calls to
      # stat resolv.conf are counted by tracing a process that calls current/1 (a process
      # cannot trace its own calls).
      script = ~S"""
      alias ClusterSRV.Resolver

      stats = fn fun ->
        :erlang.trace_pattern({:file, :read_file_info, 2}, true, [:local])
        parent = self()
        caller = spawn(fn -> receive do: (:go -> send(parent, {:done, fun.()})) end)
        :erlang.trace(caller, true, [:call])
        send(caller, :go)
        receive do: ({:done, _} -> :ok)

        count = fn count, n ->
          receive do
            {:trace, _, :call, {:file, :read_file_info, [~c"/etc/resolv.conf", _]}} ->
              count.(count, n + 1)
          after
            100 -> n
          end
        end

        count.(count, 0)
      end

      set_vm_servers = fn servers ->
        :inet_db.res_update_conf()
        for {ip, port} <- :inet_db.res_option(:nameservers), do: :inet_db.del_ns(ip, port)
        for {ip, port} <- :inet_db.res_option(:alt_nameservers), do: :inet_db.del_alt_ns(ip, port)
        for {ip, port} <- servers, do: :inet_db.add_ns(ip, port)
      end

      set_vm_servers.([{{127, 0, 0, 1}, 5353}])
      {:ok, resolver} = Resolver.new()
      IO.puts("same: #{Resolver.current(resolver) == resolver}")
      IO.puts("vm: #{resolver.source} #{stats.(fn -> Resolver.current(resolver) end)}")

      set_vm_servers.([{{0xFE80, 0, 0, 0, 0, 0, 0, 1}, 53}, {{127, 0, 0, 1}, 5353}])
      {:ok, resolver} = Resolver.new()
      IO.puts("link-local: #{resolver.source} #{stats.(fn -> Resolver.current(resolver) end)}")

      set_vm_servers.([])
      IO.puts("none: #{stats.(fn -> Resolver.current(resolver) end)}")
      """

      {output, 0} =
        System.cmd("elixir", ["-pa", Path.join(Mix.Project.app_path(), "ebin"), "-e", script],
          stderr_to_stdout: true
        )

      assert output =~ "same: true"
      assert output =~ "vm: vm 0"
      assert output =~ ~r/link-local: vm [1-9]/
      assert output =~ ~r/none: [1-9]/
    end

    test "a malformed nameserver raises and names the value the user wrote" do
      for {bad, why} <- [
            {"10.0.0.1:99999", ~s|port "99999" is not in 1..65535|},
            {"dns.local:53", "host names are not allowed"},
            {{"10.0.0.1", 0}, "port 0 is not in 1..65535"},
            {{"not-an-ip", 53}, ~s|"not-an-ip" is not an IP address|}
          ] do
        error =
          assert_raise ArgumentError, fn ->
            Resolver.new(nameservers: ["127.0.0.1", bad])
          end

        assert error.message =~ "invalid value for :nameservers: #{inspect(bad)}"
        assert error.message =~ why
      end
    end
  end

  describe "lookup/2" do
    setup do
      {:ok, resolver} = Resolver.new(nameservers: ["127.0.0.1:1"], timeout: 100, attempts: 1)
      %{resolver: resolver}
    end

    test "an invalid name is an error value, before anything is sent", %{resolver: resolver} do
      assert Resolver.lookup(resolver, "bad..name") == {:error, {:invalid_name, "bad..name"}}
      assert Resolver.lookup(resolver, "") == {:error, {:invalid_name, ""}}
      long = String.duplicate("a", 64) <> ".example."
      assert Resolver.lookup(resolver, long) == {:error, {:invalid_name, long}}
    end

    test "a name that is not UTF-8 is an invalid name, not a crash", %{resolver: resolver} do
      assert {:error, {:invalid_name, _}} = Resolver.lookup(resolver, <<0xFF, 0xFE>>)
    end

    test "a name that is not a string is a programmer error", %{resolver: resolver} do
      assert_raise ArgumentError, ~r/as a string/, fn -> Resolver.lookup(resolver, :name) end
    end
  end
end
