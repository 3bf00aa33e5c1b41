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
end
