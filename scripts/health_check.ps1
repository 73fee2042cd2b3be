# Check what start.ps1 started: process alive, /health and /ready answering 200. Exit 1 if not.
#   .\scripts\health_check.ps1 [-EnvFile .env] [-ProducerPort P] [-BasePort B]
# Ports default to the settings as the services read them (environment, .env), like health_check.sh.
# NOT RUN by the tests: there is no PowerShell on the machines this was written on.
param([int]$ProducerPort = -1, [int]$BasePort = -1, [string]$EnvFile = ".env")
Set-Location (Join-Path $PSScriptRoot "..")
$failed = $false
$python = if ($env:PYTHON) { $env:PYTHON } else { ".venv\Scripts\python.exe" }
$settings = @{}
& $python -m email_ingestion.admin.shell_settings --env-file $EnvFile | ForEach-Object {
    $name, $value = $_ -split "=", 2; $settings[$name] = $value.Trim("'")
}
if ($LASTEXITCODE -ne 0) { exit 2 }
if ($ProducerPort -lt 0) { $ProducerPort = [int]$settings["PRODUCER_METRICS_PORT"] }
if ($BasePort -lt 0) { $BasePort = [int]$settings["WORKER_BASE_PORT"] }
function Test-Endpoint([int]$Port, [string]$Path) {
    try { return (Invoke-WebRequest -UseBasicParsing -TimeoutSec 5 "http://127.0.0.1:$Port$Path").StatusCode }
    catch { if ($_.Exception.Response) { return [int]$_.Exception.Response.StatusCode } else { return 0 } }
}
function Test-Component([string]$Name, [int]$Port) {
    $pidFile = "run\$Name.pid"
    if (-not (Test-Path $pidFile) -or -not (Get-Process -Id (Get-Content $pidFile) -ErrorAction SilentlyContinue)) {
        Write-Output "${Name}: NOT RUNNING"; $script:failed = $true; return
    }
    if ($Port -eq 0) { Write-Output "${Name}: running"; return }
    $live = Test-Endpoint $Port "/health"; $ready = Test-Endpoint $Port "/ready"
    Write-Output "${Name}: /health $live /ready $ready"
    if ($live -ne 200 -or $ready -ne 200) { $script:failed = $true }
}
Test-Component "producer" $ProducerPort
Get-ChildItem run\worker-*.pid -ErrorAction SilentlyContinue | ForEach-Object {
    $i = [int]($_.BaseName -replace "worker-", "")
    Test-Component $_.BaseName $(if ($BasePort -eq 0) { 0 } else { $BasePort + $i })
}
if ($failed) { exit 1 } else { exit 0 }
