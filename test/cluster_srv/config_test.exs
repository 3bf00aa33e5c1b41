defmodule ClusterSRV.ConfigTest do
  use ExUnit.Case, async: true
  doctest ClusterSRV.Config

  alias ClusterSRV.Config

  describe "resolver_options!/1" do
    test "accepts every documented nameserver form" do
      forms = [
        "10.0.0.10",
        "127.0.0.1:5353",
        "[fd00::a]:53",
        {"10.0.0.10", 53},
        {{10, 0, 0, 10}, 53}
      ]

      assert Config.resolver_options!(nameservers: forms)[:nameservers] == forms
    end

    test "an unknown key is refused and named" do
      error = assert_raise ArgumentError, fn -> Config.resolver_options!(timout: 100) end
      assert error.message =~ "[:timout]"
    end

    test "a nameserver of an unsupported shape names the value and the list" do
      error = assert_raise ArgumentError, fn -> Config.resolver_options!(nameservers: [:dns]) end
      assert error.message =~ "invalid value for :nameservers: :dns in [:dns]"
      assert error.message =~ ~s|"127.0.0.1:5353"|
    end

    test "an IP tuple that is not an address names the tuple" do
      error =
        assert_raise ArgumentError, fn ->
          Config.resolver_options!(nameservers: [{{300, 0, 0, 1}, 53}])
        end

      assert error.message =~ "{300, 0, 0, 1} is not an IP address"
    end

    test "timeout and attempts must be positive integers within bounds" do
      for {key, bad} <- [timeout: 0, timeout: 1.5, timeout: 600_001, attempts: 11, attempts: "2"] do
        error = assert_raise ArgumentError, fn -> Config.resolver_options!([{key, bad}]) end
        assert error.message =~ "invalid value for #{inspect(key)}"
        assert error.message =~ "got: #{inspect(bad)}"
      end
    end

    test "options must be a keyword list" do
      assert_raise ArgumentError, ~r/keyword list/, fn -> Config.resolver_options!(%{}) end
      assert_raise ArgumentError, ~r/keyword list/, fn -> Config.resolver_options!([1]) end
    end
  end

  describe "config that would fail every poll is refused at start" do
    @service [service: "myapp-headless", namespace: "default", application_name: "myapp"]

    defp refused(config), do: assert_raise(ArgumentError, fn -> Config.strategy!(config) end)

    test "a nameserver port that is not a 16-bit port" do
      for port <- [2 ** 70, 0, 65_536, -1] do
        for ip <- ["10.0.0.1", {10, 0, 0, 1}] do
          error = refused(@service ++ [nameservers: [{ip, port}]])
          assert error.message =~ "invalid value for :nameservers"
          assert error.message =~ "port #{port} is not in 1..65535"
        end
      end
    end

    test "a port_name or protocol too long for the label it is asked as" do
      error = refused(@service ++ [port_name: String.duplicate("p", 63)])
      assert error.message =~ "invalid value for :port_name"
      assert error.message =~ "at most 62 characters"
      assert error.message =~ "got: \"#{String.duplicate("p", 63)}\""
      # 62 fits: `_` and 62 octets are one label of 63.
      {config, []} = Config.strategy!(@service ++ [port_name: String.duplicate("p", 62)])
      assert config.query =~ "_#{String.duplicate("p", 62)}._tcp."

      error = refused(@service ++ [port_name: "epmd", protocol: String.duplicate("t", 63)])
      assert error.message =~ "invalid value for :protocol"
    end

    test "a service, namespace and domain that join into a name over 253 octets" do
      long = String.duplicate("a", 62)

      error =
        refused(
          service: long,
          namespace: long,
          application_name: "myapp",
          cluster_domain: "#{long}.#{long}."
        )

      assert error.message =~ "is 255 characters long; a DNS name holds at most 253"
      assert error.message =~ ~s|service: "#{long}"|
      assert error.message =~ ~s|cluster_domain: "#{long}.#{long}."|
    end

    test "a query with a label that starts with a hyphen, or too long a name" do
      for bad <- [
            "-myapp.example.com",
            "myapp.-x.example.com",
            String.duplicate("a.", 127) <> "a"
          ] do
        error = refused(query: bad)
        assert error.message =~ "invalid value for :query"
        assert error.message =~ "do not start with \"-\""
        assert error.message =~ inspect(bad)
      end

      assert {_config, []} = Config.strategy!(query: "_erlang._tcp.my-app.example.com.")
    end
  end

  describe "strategy!/1: the query forms and record types" do
    defp sources(config) do
      {validated, _unknown} = Config.strategy!(config)
      for source <- validated.sources, do: {source.name, source.type, source.basename}
    end

    test "dns_cluster's form, a query and no application_name, has dns_cluster's defaults" do
      {config, []} = Config.strategy!(query: "myapp.internal")
      # Not distributed here: this node's base name is "nonode". A and AAAA, as dns_cluster.
      assert sources(query: "myapp.internal") == [
               {"myapp.internal", :a, "nonode"},
               {"myapp.internal", :aaaa, "nonode"}
             ]

      # Named after their addresses, as dns_cluster names nodes; no line per connect, 10 s for
      # a connect, and no node is disconnected because DNS stopped listing it.
      assert {config.node_naming, config.log, config.connect_timeout, config.prune} ==
               {:ip, false, 10_000, false}

      # Each can still be set.
      {config, []} =
        Config.strategy!(query: "myapp.internal", log: :info, connect_timeout: 500, prune: true)

      assert {config.log, config.connect_timeout, config.prune} == {:info, 500, true}
    end

    test "a resolver module with dns_cluster's callbacks names this node's basename" do
      {config, []} = Config.strategy!(query: "app.internal", resolver: ClusterSRV.FakeDNSCluster)
      assert config.application_name == "fake"
      assert config.resolver == ClusterSRV.FakeDNSCluster

      error =
        assert_raise ArgumentError, fn -> Config.strategy!(query: "a.b", resolver: String) end

      assert error.message =~ "invalid value for :resolver"
      assert error.message =~ "dns_cluster's resolver callbacks"
    end

    test "several queries and {basename, query} tuples" do
      config = [
        query: ["app-one.internal", {"other", "other.internal"}],
        resource_types: [:aaaa]
      ]

      assert sources(config) == [
               {"app-one.internal", :aaaa, "nonode"},
               {"other.internal", :aaaa, "other"}
             ]
    end

    test "with application_name, a query is an SRV name as before" do
      config = [query: "_erlang._tcp.myapp.service.consul.", application_name: "myapp"]
      assert sources(config) == [{"_erlang._tcp.myapp.service.consul.", :srv, "myapp"}]
      assert elem(Config.strategy!(config), 0).node_naming == :hostname
    end

    test "the Kubernetes form asks A records at the service's name, SRV at its named port" do
      config = [
        service: "web",
        namespace: "prod",
        application_name: "web",
        port_name: "discovery",
        cluster_domain: "cluster.local.",
        dns_rr_types: [:srv, :a]
      ]

      assert sources(config) == [
               {"_discovery._tcp.web.prod.svc.cluster.local.", :srv, "web"},
               {"web.prod.svc.cluster.local.", :a, "web"}
             ]
    end

    test "interval is dns_cluster's name for polling_interval" do
      {config, []} = Config.strategy!(query: "a.internal", interval: 1_234)
      assert config.polling_interval == 1_234
    end

    test "bad values name the key, the value and what is expected" do
      for {config, message} <- [
            {[query: "a.internal", dns_rr_types: [:mx]], "invalid value for :dns_rr_types"},
            {[query: "a.internal", resource_types: []], "invalid value for :resource_types"},
            {[query: "a.internal", dns_rr_types: [:a], resource_types: [:a]],
             ":dns_rr_types and :resource_types are the same option"},
            {[query: [:nope]], "invalid value for :query: :nope in [:nope] is not a query"},
            {[query: {"bad basename!", "a.internal"}], "invalid value for :application_name"},
            {[query: "a.internal", interval: 1, polling_interval: 2],
             ":interval is dns_cluster's name for :polling_interval"},
            {[query: "a.internal", interval: 0], "invalid value for :interval"},
            {[query: "a.internal", log: :loud], "invalid value for :log"}
          ] do
        error = assert_raise ArgumentError, fn -> Config.strategy!(config) end
        assert error.message =~ message, "#{inspect(config)}: #{error.message}"
      end
    end
  end
end
