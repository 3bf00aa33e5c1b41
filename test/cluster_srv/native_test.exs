defmodule ClusterSRV.NativeTest do
  # Panics print a report on stderr by design; these tests provoke them on purpose.
  use ExUnit.Case, async: true

  alias ClusterSRV.Native

  describe "panic guards (test build only)" do
    test "a panic in a NIF body comes back as an error value" do
      assert {:error, {:panic, "test panic in the NIF body"}} =
               Native.test_panic(:nif, make_ref())
    end

    test "a panic inside a runtime task is sent as the reply" do
      ref = make_ref()
      assert :ok = Native.test_panic(:task, ref)

      assert_receive {:cluster_srv_lookup, ^ref,
                      {:error, {:panic, "test panic in a runtime task"}}},
                     2_000
    end

    test "a task dropped before it replied still sends one error reply" do
      ref = make_ref()
      assert :ok = Native.test_panic(:cancel, ref)

      assert_receive {:cluster_srv_lookup, ^ref, {:error, {:io, "the lookup was cancelled"}}},
                     2_000

      refute_receive {:cluster_srv_lookup, ^ref, _}, 100
    end

    test "the VM and later lookups are unaffected by the panics" do
      for _ <- 1..20, do: Native.test_panic(:nif, make_ref())

      {:ok, resolver} =
        ClusterSRV.Resolver.new(nameservers: ["127.0.0.1:1"], timeout: 50, attempts: 1)

      assert {:error, {:invalid_name, "x..y"}} = ClusterSRV.Resolver.lookup(resolver, "x..y")
    end
  end

  test "reloading the module keeps the loaded library: the reload is refused and said so" do
    # In a VM of its own: a reload that went wrong here would break every other test.
    script = """
    {:ok, _} = ClusterSRV.Resolver.new(nameservers: ["127.0.0.1:1"])
    {:module, ClusterSRV.Native} = :code.ensure_loaded(ClusterSRV.Native)
    beam = :code.which(ClusterSRV.Native)
    {:ok, binary} = File.read(beam)
    IO.puts("reload: " <> inspect(:code.load_binary(ClusterSRV.Native, beam, binary)))
    {:ok, resolver} = ClusterSRV.Resolver.new(nameservers: ["127.0.0.1:1"], timeout: 50, attempts: 1)
    IO.puts("after: " <> inspect(ClusterSRV.Resolver.lookup(resolver, "x..y")))
    """

    {output, 0} =
      System.cmd("elixir", ["-pa", Path.join(Mix.Project.app_path(), "ebin"), "-e", script],
        stderr_to_stdout: true
      )

    assert output =~ "reload: {:error, :on_load_failure}"
    assert output =~ "ClusterSRV.Native was not reloaded"
    assert output =~ "restart the VM"
    assert output =~ ~s|after: {:error, {:invalid_name, "x..y"}}|
  end

  test "reloaded after its code was deleted, a call says to restart the VM, not to rebuild" do
    script = """
    {:ok, _} = ClusterSRV.Resolver.new(nameservers: ["127.0.0.1:1"])
    # The old code, deleted, still holds the library, which cannot be loaded twice.
    true = :code.delete(ClusterSRV.Native)
    IO.puts("load: " <> inspect(:code.load_file(ClusterSRV.Native)))
    ClusterSRV.Resolver.new(nameservers: ["127.0.0.1:1"])
    """

    {output, status} =
      System.cmd("elixir", ["-pa", Path.join(Mix.Project.app_path(), "ebin"), "-e", script],
        stderr_to_stdout: true
      )

    assert status != 0
    assert output =~ "load: {:module, ClusterSRV.Native}"
    assert output =~ "cannot be loaded again in this VM"
    assert output =~ "Restart the VM"
    refute output =~ "Run `mix compile`"
  end

  test "a runtime that could not start is started again by a later call" do
    # In a VM of its own, with its file descriptors used up before the NIF loads (interactive
    # mode loads it at the first call): all but one, which loading the library needs.
    script = ~S"""
    alias ClusterSRV.Harness.{DNS, Zone}
    alias ClusterSRV.Resolver
    service = Zone.service("fd", "default", pods: [{"fd-0", {127, 0, 0, 10}}])
    dns = DNS.start!(services: [service])
    false = :code.is_loaded(ClusterSRV.Native)

    exhaust = fn exhaust, held ->
      case :gen_udp.open(0) do
        {:ok, socket} -> exhaust.(exhaust, [socket | held])
        {:error, :emfile} -> held
      end
    end

    [spare | held] = exhaust.(exhaust, [])
    :gen_udp.close(spare)
    IO.puts("exhausted: " <> inspect(Resolver.new(nameservers: [DNS.nameserver(dns)])))
    Enum.each(held, &:gen_udp.close/1)
    {:ok, resolver} = Resolver.new(nameservers: [DNS.nameserver(dns)])
    IO.puts("freed: " <> inspect(Resolver.lookup(resolver, Zone.service_name(service))))
    DNS.stop(dns)
    """

    {output, 0} =
      System.cmd("elixir", ["-pa", Path.join(Mix.Project.app_path(), "ebin"), "-e", script],
        stderr_to_stdout: true
      )

    assert output =~
             ~s|exhausted: {:error, {:io, "cannot start the tokio runtime: Too many open files|

    assert output =~ ~s|freed: {:ok, [%ClusterSRV.Record{|
    assert output =~ "fd-0.fd.default.svc.cluster.local"
  end

  @tag :tmp_dir
  test "without the library, a call explains how to build it", %{tmp_dir: tmp_dir} do
    # A copy of the app's code with no priv dir: what a user sees if the NIF was never built.
    ebin = Path.join(tmp_dir, "lib/libcluster_srv/ebin")
    File.mkdir_p!(ebin)
    File.cp_r!(Path.join(Mix.Project.app_path(), "ebin"), ebin)

    {output, status} =
      System.cmd(
        "elixir",
        ["-pa", ebin, "-e", "ClusterSRV.Resolver.new(nameservers: [\"127.0.0.1\"])"],
        stderr_to_stdout: true
      )

    assert status != 0
    assert output =~ "the cluster_srv NIF is not loaded"
    assert output =~ "Run `mix compile`"
    refute output =~ "nif_not_loaded"
  end
end
