import subprocess
import sys


def test_doctor_reports_llamacpp_working_with_a_quantized_gguf():
    proc = subprocess.run([sys.executable, "-m", "toolkit", "doctor"], capture_output=True, text=True,
                          env={**__import__("os").environ, "COLUMNS": "200", "OLLAMA_HOST": "127.0.0.1:9"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "llama.cpp" in proc.stdout and "works" in proc.stdout and "Q4_1" in proc.stdout
    assert "not reachable" in proc.stdout  # nothing listens on port 9
    assert "Traceback" not in proc.stderr
