defmodule ClusterSRV.Integration.LinkLocalTest do
  # A nameserver at an IPv6 link-local address, fe80::1 on the loopback of a network namespace
  # of its own, served by a real BIND listening there on port 53. Each case runs a VM in the
  # namespace, whose /etc/resolv.conf is the namespace's (`ip netns exec` mounts it), so that
  # the VM's resolver settings, resolv.conf and the :nameservers option are all tried.
  use ExUnit.Case, async: false

  @moduletag :integration
  @moduletag :netns

  alias ClusterSRV.Harness.{DNS, Janitor, Netns, Zone}

  @service Zone.service("ll-headless", "default", pods: [{"ll-0", {10, 0, 0, 1}}])

  setup_all do
    ns = Netns.name("ll")
    janitor = Janitor.start!()
    Janitor.track(janitor, :ns, ns)
    Netns.add!(ns)
    Netns.ip!(ns, ~w(-6 addr add fe80::1/64 dev lo nodad))

    dns =
      DNS.start!(netns: ns, ip: {127, 0, 0, 1}, port: 53, listen_v6: true, services: [@service])

    on_exit(fn ->
      DNS.stop(dns)
      Netns.delete(ns)
      Janitor.finish(janitor)
    end)

    %{ns: ns}
  end

  # Runs `script` in a VM in the namespace, with `resolv_conf` as its /etc/resolv.conf, and
  # returns what it printed. The script has `lookup.(resolver)` and `report.(label, value)`.
  defp run_in_namespace(ns, resolv_conf, script) do
    File.mkdir_p!(Netns.etc_dir(ns))
    File.write!(Path.join(Netns.etc_dir(ns), "resolv.conf"), resolv_conf)

    prelude = """
    alias ClusterSRV.Resolver
    lookup = fn resolver ->
      case Resolver.lookup(resolver, #{inspect(Zone.service_name(@service))}) do
        {:ok, records} -> Enum.map(records, & &1.target)
        error -> error
      end
    end
    report = fn label, value -> IO.puts(label <> ": " <> inspect(value)) end
    # No server from the VM's settings: the resolver reads resolv.conf itself.
    forget_vm_servers = fn ->
      :inet_db.res_update_conf()
      for {ip, port} <- :inet_db.res_option(:nameservers), do: :inet_db.del_ns(ip, port)
      for {ip, port} <- :inet_db.res_option(:alt_nameservers), do: :inet_db.del_alt_ns(ip, port)
    end
    """

    ebin = Path.join(Mix.Project.app_path(), "ebin")
    argv = [System.find_executable("elixir"), "-pa", ebin, "-e", prelude <> script]
    {ip, args} = Netns.exec_args(ns, argv)
    {output, 0} = System.cmd(ip, args, stderr_to_stdout: true)
    output
  end

  @found ~s|["ll-0.ll-headless.default.svc.cluster.local"]|

  test "a link-local server written with its zone in :nameservers is asked through it",
       %{ns: ns} do
    output =
      run_in_namespace(ns, "nameserver 127.0.0.1\n", ~S"""
      for form <- ["fe80::1%lo", "[fe80::1%lo]:53", {"fe80::1%1", 53}] do
        {:ok, resolver} = Resolver.new(nameservers: [form], timeout: 500, attempts: 1)
        report.("#{inspect(form)}", {resolver.servers, lookup.(resolver)})
      end

      for form <- ["fe80::1", "[fe80::1]:53", {{0xFE80, 0, 0, 0, 0, 0, 0, 1}, 53}] do
        try do
          Resolver.new(nameservers: [form])
        rescue
          error in ArgumentError -> IO.puts("without zone #{inspect(form)}: #{error.message}")
        end
      end
      """)

    for form <- [~s|"fe80::1%lo"|, ~s|"[fe80::1%lo]:53"|, ~s|{"fe80::1%1", 53}|] do
      assert output =~ ~s|#{form}: {["[fe80::1%1]:53"], #{@found}}|
    end

    for form <- [~s|"fe80::1"|, ~s|"[fe80::1]:53"|, "{{65152, 0, 0, 0, 0, 0, 0, 1}, 53}"] do
      assert output =~ ~s|without zone #{form}: invalid value for :nameservers: #{form}|
    end

    assert output =~ ~s|fe80::1 is link-local, reached only through the interface its zone |
    assert output =~ ~s|write it with its zone, as "fe80::1%eth0"|
  end

  test "resolv.conf's zone serves the VM's settings and resolv.conf itself", %{ns: ns} do
    output =
      run_in_namespace(ns, "nameserver fe80::1%lo\n", ~S"""
      # OTP's own parse drops the zone: the VM's settings hold the bare address.
      :inet_db.res_update_conf()
      report.("vm settings", :inet_db.res_option(:nameservers))
      {:ok, resolver} = Resolver.new(timeout: 500, attempts: 1)
      report.("vm", {resolver.source, resolver.servers, lookup.(resolver)})
      forget_vm_servers.()
      {:ok, resolver} = Resolver.new(timeout: 500, attempts: 1)
      report.("resolv.conf", {resolver.source, resolver.servers, lookup.(resolver)})
      """)

    assert output =~ "vm settings: [{{65152, 0, 0, 0, 0, 0, 0, 1}, 53}]"
    assert output =~ ~s|vm: {:vm, ["[fe80::1%1]:53"], #{@found}}|
    assert output =~ ~s|resolv.conf: {:resolv_conf, ["[fe80::1%1]:53"], #{@found}}|
  end

  test "a link-local server whose zone is not known is left out, and alone it is an error " <>
         "that names it",
       %{ns: ns} do
    output =
      run_in_namespace(ns, "nameserver fe80::1\nnameserver 127.0.0.1\n", ~S"""
      {:ok, resolver} = Resolver.new(timeout: 500, attempts: 1)
      report.("vm", {resolver.source, resolver.servers, lookup.(resolver)})
      forget_vm_servers.()
      {:ok, resolver} = Resolver.new(timeout: 500, attempts: 1)
      report.("resolv.conf", {resolver.source, resolver.servers, lookup.(resolver)})
      """)

    assert output =~ ~s|vm: {:vm, ["127.0.0.1:53"], #{@found}}|
    assert output =~ ~s|resolv.conf: {:resolv_conf, ["127.0.0.1:53"], #{@found}}|

    output =
      run_in_namespace(ns, "nameserver fe80::1\n", ~S"""
      report.("vm", Resolver.new(timeout: 500, attempts: 1))
      forget_vm_servers.()
      report.("resolv.conf", Resolver.new(timeout: 500, attempts: 1))
      """)

    for source <- ["vm", "resolv.conf"] do
      assert output =~
               ~s|#{source}: {:error, {:io, "no usable nameserver: fe80::1 is link-local and its zone|

      assert output =~ "nameserver fe80::1%eth0 in resolv.conf"
    end
  end
end
