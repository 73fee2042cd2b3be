# Start the producer and N workers in the background (Windows PowerShell 5+ / PowerShell 7).
#   .\scripts\start.ps1 [-Workers 2] [-EnvFile .env]
# Same layout as start.sh: PID files in run\, logs in logs\, worker i on port 9100+i.
param([int]$Workers = 2, [string]$EnvFile = ".env", [int]$BasePort = 9100)
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..")
$Python = if ($env:PYTHON) { $env:PYTHON } elseif (Test-Path ".venv\Scripts\python.exe") { ".venv\Scripts\python.exe" } else { "python" }
New-Item -ItemType Directory -Force -Path run, logs | Out-Null

function Start-Component([string]$Name, [string[]]$Arguments) {
    $pidFile = "run\$Name.pid"
    if ((Test-Path $pidFile) -and (Get-Process -Id (Get-Content $pidFile) -ErrorAction SilentlyContinue)) {
        Write-Output "$Name already running (pid $(Get-Content $pidFile))"; return
    }
    $proc = Start-Process -FilePath $Python -ArgumentList $Arguments -NoNewWindow -PassThru `
        -RedirectStandardOutput "logs\$Name.out.log" -RedirectStandardError "logs\$Name.log"
    Set-Content -Path $pidFile -Value $proc.Id
    Write-Output "started $Name (pid $($proc.Id), log logs\$Name.log)"
}

Start-Component "producer" @("producer.py", "--env-file", $EnvFile)
for ($i = 1; $i -le $Workers; $i++) {
    $port = if ($BasePort -eq 0) { 0 } else { $BasePort + $i }
    Start-Component "worker-$i" @("worker.py", "--env-file", $EnvFile, "--consumer", "$env:COMPUTERNAME-worker-$i", "--metrics-port", "$port")
}
