defmodule ClusterSRV.Harness.Watchdog do
  @moduledoc """
  Runs an OS command as a port that dies with its owner.

  The command runs under `sh`, which kills it as soon as the port's stdin closes. The port closes
  when its owning process exits, or when the whole VM dies, even by SIGKILL, because the kernel
  closes the pipe. So no `named` or `beam` outlives the run that started it.
  """

  # `cat` reads the port's pipe through fd 3: a background job's own stdin is /dev/null. The
  # background job must not hold the port's stdout, or the port would not see the command end.
  @script ~S"""
  exec 3<&0
  "$@" </dev/null &
  child=$!
  ( cat <&3 >/dev/null; kill -TERM "$child" 2>/dev/null ) >/dev/null 2>&1 &
  exec 3<&-
  wait "$child"
  """

  @doc """
  Opens the port. Output lines arrive as `{port, {:data, {:eol | :noeol, line}}}` and the end as
  `{port, {:exit_status, status}}`. `env:` adds variables to the command's environment; a
  value of `false` removes the variable.
  """
  def open(executable, args, opts \\ []) do
    env =
      for {key, value} <- Keyword.get(opts, :env, []),
          do: {to_charlist(key), if(value == false, do: false, else: to_charlist(value))}

    Port.open({:spawn_executable, "/bin/sh"}, [
      :binary,
      :exit_status,
      :stderr_to_stdout,
      {:line, 4096},
      {:args, ["-c", @script, "watchdog", executable | args]},
      {:env, env}
    ])
  end

  @doc """
  A fresh temporary directory named after `prefix` and the run: `CLUSTER_SRV_RUN` (set by
  `make test`) marks everything one run starts, so the run can check it left nothing behind.
  """
  def tmp_dir(prefix) do
    run = System.get_env("CLUSTER_SRV_RUN", "adhoc")
    dir = Path.join(System.tmp_dir!(), "#{prefix}_#{run}_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    dir
  end

  @doc "Closes the port, which stops the command, and waits for it to exit."
  def close(port, timeout \\ 5_000) do
    case Port.info(port, :os_pid) do
      {:os_pid, os_pid} ->
        Port.close(port)
        wait_gone(os_pid, timeout)

      nil ->
        :ok
    end
  catch
    :error, :badarg -> :ok
  end

  @doc "Waits up to `timeout` ms for the OS process `os_pid` to end, then kills it."
  def wait_gone(os_pid, timeout) when timeout <= 0 do
    System.cmd("kill", ["-KILL", to_string(os_pid)], stderr_to_stdout: true)
    :ok
  end

  def wait_gone(os_pid, timeout) do
    if File.exists?("/proc/#{os_pid}") do
      Process.sleep(20)
      wait_gone(os_pid, timeout - 20)
    else
      :ok
    end
  end
end
